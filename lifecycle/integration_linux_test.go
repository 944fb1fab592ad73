package lifecycle

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/dockerproxy"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// The real runtime: Debian's containerd, dockerd and runc, started by the
// Runtime in the test's own mount and network namespaces, every path in a
// temporary directory, and the real docker CLI talking through dockerproxy.

// realEnv is a Runtime configured for the real daemons.
type realEnv struct {
	dir  string
	cfg  Config
	bins map[string]string

	mu     sync.Mutex
	starts map[string]int // processes started through the exec seam, by name
}

func (e *realEnv) started(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.starts[name]
}

// setupReal gates the test (root, isolation, binaries), hides the state
// the daemons keep at fixed paths, and builds a Config under a fresh
// temporary directory with the bin dir symlinking the system's binaries.
func setupReal(t testing.TB) *realEnv {
	t.Helper()
	testenv.RequireIsolated(t)
	e := &realEnv{bins: map[string]string{}, starts: map[string]int{}}
	for _, b := range []string{"containerd", "dockerd", "containerd-shim-runc-v2", "runc", "docker", "busybox"} {
		e.bins[b] = testenv.RequireBinary(t, b)
	}
	testenv.HideDaemonState(t)
	e.dir = shortTempDir(t)
	// dockerd leaves mounts in its roots (overlay2 makes its home a
	// private bind mount): unmount them before the directory goes.
	t.Cleanup(func() {
		b, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, e.dir) {
				t.Logf("mount left: %s", l)
			}
		}
		unmountUnder(t, e.dir)
	})
	e.cfg = testConfig(t, e.dir)
	for _, b := range requiredBinaries {
		link := filepath.Join(e.cfg.RuntimeBinDir, b)
		os.Remove(link)
		if err := os.Symlink(e.bins[b], link); err != nil {
			t.Fatal(err)
		}
	}
	e.cfg.StopGrace = time.Minute
	// Only a hang reaches these on a loaded machine.
	e.cfg.ContainerdTimeout = time.Minute
	e.cfg.DockerdTimeout = 2 * time.Minute
	e.cfg.StartProcess = func(cmd *exec.Cmd) error {
		e.mu.Lock()
		e.starts[filepath.Base(cmd.Path)]++
		e.mu.Unlock()
		return cmd.Start()
	}
	testenv.RemoveNewDockerCgroups(t)
	return e
}

// busyboxImage is a root filesystem tarball: a static busybox and its
// applets as symlinks.
func busyboxImage(t testing.TB, busybox string) []byte {
	t.Helper()
	bin, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if f, err := elf.Open(busybox); err == nil {
		dynamic := f.Section(".interp") != nil
		f.Close()
		if dynamic {
			testenv.RequireFile(t, "/usr/bin/busybox (busybox-static, not a dynamic busybox)")
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		t.Helper()
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "tmp", "etc", "dev", "proc", "sys"} {
		add(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}, nil)
	}
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin))}, bin)
	for _, applet := range []string{"sh", "echo", "cat", "sleep", "seq"} {
		add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}, nil)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// docker runs the docker CLI against host with stdin, and returns its
// standard output.
func docker(t testing.TB, e *realEnv, host string, stdin []byte, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bins["docker"], args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+host, "DOCKER_CONFIG="+filepath.Join(e.dir, "docker-config"))
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker %s: %v\nstderr: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// dockerEventually runs the docker CLI until it succeeds with want on its
// standard output, or fails the test after a minute with its last
// answer: dockerd answers /_ping at once after containerd was started
// again, but reconnects to it only after its gRPC back-off (seconds).
func dockerEventually(t testing.TB, e *realEnv, host, want string, args ...string) {
	t.Helper()
	var last string
	waitUntil(t, time.Minute, "docker "+strings.Join(args, " ")+" to answer "+strings.TrimSpace(want), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, e.bins["docker"], args...)
		cmd.Env = append(os.Environ(), "DOCKER_HOST="+host, "DOCKER_CONFIG="+filepath.Join(e.dir, "docker-config"))
		out, err := cmd.CombinedOutput()
		last = fmt.Sprintf("%v: %s", err, out)
		return err == nil && string(out) == want
	})
	t.Logf("docker %s: %s", strings.Join(args, " "), last)
}

// ourProcesses lists the processes whose command line names dir: the
// daemons and the shims of this test.
func ourProcesses(dir string) []string {
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		pid := filepath.Base(filepath.Dir(p))
		n, err := strconv.Atoi(pid)
		if err != nil || processGone(n) {
			continue
		}
		found = append(found, pid+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	}
	return found
}

func TestIntegrationRealRuntime(t *testing.T) {
	e := setupReal(t)
	reg := prometheus.NewRegistry()
	e.cfg.Registerer = reg
	r := startRuntime(t, e.cfg)
	t.Cleanup(func() {
		if left := ourProcesses(e.dir); len(left) > 0 {
			t.Errorf("processes left behind:\n%s", strings.Join(left, "\n"))
		}
	})

	t.Run("cold start with 100 callers", func(t *testing.T) {
		count := map[string]int{}
		for _, res := range ensureAtOnce(r, 100) {
			count[res.Status]++
			if !res.Ready {
				t.Fatalf("Ensure: %+v", res)
			}
			if res.Status == StatusStarted {
				t.Logf("started: %s", res.Message)
			}
		}
		if count[StatusStarted] != 1 || count[StatusReused] != 99 {
			t.Fatalf("answers %v, want 1 started, 99 reused", count)
		}
		if e.started("containerd") != 1 || e.started("dockerd") != 1 {
			t.Fatalf("spawned containerd %d times and dockerd %d, want once each", e.started("containerd"), e.started("dockerd"))
		}
		if res := r.Ensure(context.Background(), true); res.Status != StatusReused {
			t.Fatalf("next Ensure: %+v, want reused", res)
		}
		st := r.Status(context.Background())
		if !st.ContainerdReady || !st.DockerReady || st.Detail != "docker socket ready" {
			t.Fatalf("status: %+v", st)
		}
		if out := docker(t, e, "unix://"+e.cfg.DockerSocket, nil, "version", "--format", "{{.Server.Version}}"); strings.TrimSpace(out) == "" {
			t.Fatal("docker version: no server version")
		}
		if tail, err := readLog(r, Dockerd, LogOptions{Tail: 5}); err != nil || len(tail) == 0 {
			t.Fatalf("dockerd log tail: %q, %v", tail, err)
		}
	})

	t.Run("docker CLI through the proxy", func(t *testing.T) {
		preg := prometheus.NewRegistry()
		p, err := dockerproxy.New(dockerproxy.Config{Socket: e.cfg.DockerSocket, Registerer: preg})
		if err != nil {
			t.Fatal(err)
		}
		psock := filepath.Join(e.dir, "p.sock")
		ln, err := net.Listen("unix", psock)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- p.Serve(ctx, ln) }()
		defer func() {
			cancel()
			if err := <-served; err != nil {
				t.Errorf("proxy Serve: %v", err)
			}
		}()
		host := "unix://" + psock

		if out := docker(t, e, host, nil, "version", "--format", "{{.Server.Version}}"); strings.TrimSpace(out) == "" {
			t.Fatal("docker version through the proxy: no server version")
		}
		docker(t, e, host, busyboxImage(t, e.bins["busybox"]), "import", "-", "arcbox-test/busybox:1")
		if out := docker(t, e, host, nil, "run", "--rm", "arcbox-test/busybox:1", "echo", "hi"); out != "hi\n" {
			t.Fatalf("docker run echo hi: %q", out)
		}
		// stdin to EOF: the CLI half-closes, the container's cat ends.
		var in bytes.Buffer
		for i := range 20000 {
			fmt.Fprintf(&in, "line %d of the standard input\n", i)
		}
		if out := docker(t, e, host, in.Bytes(), "run", "-i", "--rm", "arcbox-test/busybox:1", "cat"); out != in.String() {
			t.Fatalf("docker run -i cat: %d bytes back, want the %d sent", len(out), in.Len())
		}
		id := strings.TrimSpace(docker(t, e, host, nil, "run", "-d", "arcbox-test/busybox:1",
			"sh", "-c", "for i in 1 2 3 4; do echo line $i; sleep 0.2; done"))
		if out := docker(t, e, host, nil, "logs", "-f", id); out != "line 1\nline 2\nline 3\nline 4\n" {
			t.Fatalf("docker logs -f: %q", out)
		}
		docker(t, e, host, nil, "rm", id)

		if n, _ := testutil.GatherAndCount(preg); n == 0 {
			t.Error("proxy metrics not registered")
		}
		for _, dir := range []string{"to_docker", "from_docker"} {
			var got float64
			mfs, _ := preg.Gather()
			for _, mf := range mfs {
				if mf.GetName() != "arcbox_agent_docker_proxy_bytes_total" {
					continue
				}
				for _, m := range mf.GetMetric() {
					if m.GetLabel()[0].GetValue() == dir {
						got = m.GetCounter().GetValue()
					}
				}
			}
			if got < float64(in.Len()) {
				t.Errorf("bytes %s: %v, want at least the %d bytes of stdin", dir, got, in.Len())
			}
		}
	})

	t.Run("dockerd killed, restarted alone", func(t *testing.T) {
		pid, ok := r.PID(Dockerd)
		if !ok {
			t.Fatal("no dockerd pid")
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, time.Minute, "dockerd's exit in Status", func() bool {
			return strings.HasPrefix(r.Status(context.Background()).Services[1].Detail, "exited: ")
		})
		st := r.Status(context.Background())
		if s := st.Services[1]; s.Status != ServiceError || !strings.Contains(s.Detail, "signal: killed") || !strings.Contains(s.Detail, "last lines of ") {
			t.Fatalf("dockerd service after SIGKILL: %+v", s)
		}
		if !st.ContainerdReady {
			t.Fatal("containerd went down with dockerd")
		}
		assertReady(t, r, "after dockerd was killed", 1, 0)
		res := r.Ensure(context.Background(), true)
		if !res.Ready || res.Status != StatusStarted {
			t.Fatalf("Ensure after the kill: %+v, want started", res)
		}
		assertReady(t, r, "after dockerd was restarted", 1, 1)
		if e.started("containerd") != 1 || e.started("dockerd") != 2 {
			t.Fatalf("spawned containerd %d times and dockerd %d, want 1 and 2", e.started("containerd"), e.started("dockerd"))
		}
		if out := docker(t, e, "unix://"+e.cfg.DockerSocket, nil, "run", "--rm", "arcbox-test/busybox:1", "echo", "back"); out != "back\n" {
			t.Fatalf("docker run after the restart: %q", out)
		}
	})

	t.Run("containerd killed, restarted alone", func(t *testing.T) {
		pid, ok := r.PID(Containerd)
		if !ok {
			t.Fatal("no containerd pid")
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, time.Minute, "containerd's exit in Status", func() bool {
			return strings.HasPrefix(r.Status(context.Background()).Services[0].Detail, "exited: ")
		})
		st := r.Status(context.Background())
		if s := st.Services[0]; s.Status != ServiceError || !strings.Contains(s.Detail, "signal: killed") {
			t.Fatalf("containerd service after SIGKILL: %+v", s)
		}
		if !st.DockerReady || !strings.Contains(st.Detail, "containerd exited (signal: killed)") {
			t.Fatalf("status after containerd died: %+v, want dockerd still answering and the exit named", st)
		}
		res := r.Ensure(context.Background(), true)
		if !res.Ready || res.Status != StatusStarted || !strings.Contains(res.Message, "spawned bundled containerd") || strings.Contains(res.Message, "spawned bundled dockerd") {
			t.Fatalf("Ensure after the kill: %+v, want started, containerd alone", res)
		}
		if e.started("containerd") != 2 || e.started("dockerd") != 2 {
			t.Fatalf("spawned containerd %d times and dockerd %d, want 2 and 2", e.started("containerd"), e.started("dockerd"))
		}
		// dockerd finds the new containerd by itself.
		dockerEventually(t, e, "unix://"+e.cfg.DockerSocket, "again\n", "run", "--rm", "arcbox-test/busybox:1", "echo", "again")
	})

	t.Run("shutdown leaves nothing", func(t *testing.T) {
		cpid, _ := r.PID(Containerd)
		dpid, _ := r.PID(Dockerd)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		for _, pid := range []int{cpid, dpid} {
			if !processGone(pid) {
				t.Errorf("pid %d alive after Shutdown", pid)
			}
		}
		if left := ourProcesses(e.dir); len(left) > 0 {
			t.Fatalf("processes left behind:\n%s", strings.Join(left, "\n"))
		}
		st := r.Status(context.Background())
		if st.ContainerdReady || st.DockerReady {
			t.Fatalf("status after Shutdown: %+v", st)
		}
	})
}

// TestIntegrationAdoptRealDaemons: a Runtime abandoned with its daemons
// running and a container in them (as a killed agent leaves them); a new
// Runtime adopts both, the container goes on running, a kill -9 of the
// adopted containerd is noticed and repaired, and Shutdown stops them all.
func TestIntegrationAdoptRealDaemons(t *testing.T) {
	e := setupReal(t)
	old, err := New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res := old.Ensure(context.Background(), true); res.Status != StatusStarted {
		t.Fatalf("the earlier Runtime's Ensure: %+v", res)
	}
	cpid, _ := old.PID(Containerd)
	dpid, _ := old.PID(Dockerd)
	t.Cleanup(func() {
		if left := ourProcesses(e.dir); len(left) > 0 {
			t.Errorf("processes left behind, killed:\n%s", strings.Join(left, "\n"))
			for _, l := range left {
				if pid, err := strconv.Atoi(strings.SplitN(l, ":", 2)[0]); err == nil {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
			}
		}
	})
	host := "unix://" + e.cfg.DockerSocket
	docker(t, e, host, busyboxImage(t, e.bins["busybox"]), "import", "-", "arcbox-test/busybox:1")
	id := strings.TrimSpace(docker(t, e, host, nil, "run", "-d", "--stop-timeout", "1", "arcbox-test/busybox:1", "sleep", "600"))

	r := startRuntime(t, e.cfg)
	for name, want := range map[string]int{Containerd: cpid, Dockerd: dpid} {
		if pid, ok := r.PID(name); !ok || pid != want {
			t.Fatalf("PID(%s): %d, %v; want the adopted %d", name, pid, ok, want)
		}
	}
	res := r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusReused || !strings.Contains(res.Message, fmt.Sprintf("adopted dockerd (pid=%d)", dpid)) {
		t.Fatalf("Ensure beside the adopted daemons: %+v, want reused, naming them", res)
	}
	if e.started("containerd") != 1 || e.started("dockerd") != 1 {
		t.Fatalf("spawned containerd %d times and dockerd %d, want the earlier Runtime's only", e.started("containerd"), e.started("dockerd"))
	}
	if running := strings.TrimSpace(docker(t, e, host, nil, "inspect", "-f", "{{.State.Running}}", id)); running != "true" {
		t.Fatalf("the container after the adoption: running %s", running)
	}

	// The adopted containerd killed: seen through its pidfd, started again.
	if err := unix.Kill(cpid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "the adopted containerd's exit in Status", func() bool {
		return strings.HasPrefix(r.Status(context.Background()).Services[0].Detail, "exited: ")
	})
	res = r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusStarted || !strings.Contains(res.Message, "spawned bundled containerd") || strings.Contains(res.Message, "spawned bundled dockerd") {
		t.Fatalf("Ensure after the kill: %+v, want containerd alone started beside the adopted dockerd", res)
	}
	dockerEventually(t, e, host, "still here\n", "exec", id, "echo", "still here")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !processGone(dpid) {
		t.Error("the adopted dockerd outlived Shutdown")
	}
	r.mu.Lock()
	how := r.children[Dockerd].exitStatus()
	r.mu.Unlock()
	if how != "exited after SIGTERM (adopted: exit status unknown)" {
		t.Errorf("the adopted dockerd's end: %q, want a stop by SIGTERM", how)
	}
	if left := ourProcesses(e.dir); len(left) > 0 {
		t.Fatalf("processes left behind:\n%s", strings.Join(left, "\n"))
	}
}
