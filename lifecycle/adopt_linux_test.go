package lifecycle

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// Daemons left by an earlier agent, played by fakes: the configured
// binaries are links to the test binary, so a fake daemon runs "the
// configured binary" as a real one would.

// adoptConfig is a Config whose containerd and dockerd are the test
// binary, and whose fakes are started through f.
func adoptConfig(t *testing.T, f *fakes) Config {
	t.Helper()
	cfg := testConfig(t, shortTempDir(t))
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{Containerd, Dockerd} {
		link := filepath.Join(cfg.RuntimeBinDir, name)
		os.Remove(link)
		if err := os.Symlink(self, link); err != nil {
			t.Fatal(err)
		}
	}
	cfg.StartProcess = f.exec
	cfg.StopGrace = time.Minute
	cfg.ContainerdTimeout = 2 * time.Minute
	cfg.DockerdTimeout = 2 * time.Minute
	return cfg
}

// crashedAgent starts the daemons with a Runtime that is then abandoned,
// as a killed agent leaves them: running, with their sockets, logs and
// pid files. The fakes stay the test process's children, which reaps
// them when they end, as init would. It returns their pids; whatever is
// left of them is killed when the test ends.
func crashedAgent(t *testing.T, cfg Config) (containerd, dockerd int) {
	t.Helper()
	old, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res := old.Ensure(context.Background(), true); res.Status != StatusStarted {
		t.Fatalf("the earlier agent's Ensure: %+v", res)
	}
	containerd, _ = old.PID(Containerd)
	dockerd, _ = old.PID(Dockerd)
	t.Cleanup(func() {
		for _, pid := range []int{containerd, dockerd} {
			if !processGone(pid) {
				t.Errorf("pid %d outlived the test; killed", pid)
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	})
	return containerd, dockerd
}

// TestAdoptDaemonsLeftByAnEarlierAgent: the new Runtime adopts both
// daemons when it is built: Status says so, Ensure answers reused and
// starts nothing, a kill -9 of an adopted daemon is noticed (through its
// pidfd) and the next Ensure starts it again, and Shutdown stops the
// adopted ones with SIGTERM as its own.
func TestAdoptDaemonsLeftByAnEarlierAgent(t *testing.T) {
	f := newFakes(t)
	cfg := adoptConfig(t, f)
	cpid, dpid := crashedAgent(t, cfg)
	if pid, err := readPIDFile(filepath.Join(cfg.ContainerdState, "containerd.pid")); err != nil || pid != cpid {
		t.Fatalf("containerd's pid file: %d, %v; want %d", pid, err, cpid)
	}

	r := startRuntime(t, cfg)
	for name, want := range map[string]int{Containerd: cpid, Dockerd: dpid} {
		if pid, ok := r.PID(name); !ok || pid != want {
			t.Errorf("PID(%s): %d, %v; want the earlier agent's %d", name, pid, ok, want)
		}
	}
	st := r.Status(context.Background())
	if !st.ContainerdReady || !st.DockerReady {
		t.Fatalf("status: %+v", st)
	}
	for i, pid := range []int{cpid, dpid} {
		if s := st.Services[i]; s.Status != ServiceReady || !strings.HasSuffix(s.Detail, fmt.Sprintf("; adopted from an earlier agent (pid %d)", pid)) {
			t.Errorf("service %+v: want ready, adopted (pid %d)", s, pid)
		}
	}
	if res := r.Ensure(context.Background(), false); !res.Ready || res.Status != StatusReused {
		t.Errorf("probe: %+v, want reused", res)
	}
	res := r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusReused {
		t.Fatalf("Ensure: %+v, want ready and reused: nothing was started", res)
	}
	for name, pid := range map[string]int{Containerd: cpid, Dockerd: dpid} {
		if want := fmt.Sprintf("adopted %s (pid=%d) left running by an earlier agent", name, pid); !strings.Contains(res.Message, want) {
			t.Errorf("message %q lacks %q", res.Message, want)
		}
	}
	if f.starts(Containerd) != 1 || f.starts(Dockerd) != 1 {
		t.Fatalf("starts: containerd %d, dockerd %d; want the earlier agent's only", f.starts(Containerd), f.starts(Dockerd))
	}

	// An adopted dockerd killed: noticed though it is not the Runtime's
	// child, and started again by the next Ensure.
	if err := unix.Kill(dpid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "the adopted dockerd's exit in Status", func() bool {
		return strings.HasPrefix(r.Status(context.Background()).Services[1].Detail, "exited: ")
	})
	st = r.Status(context.Background())
	if s := st.Services[1]; s.Status != ServiceError || !strings.Contains(s.Detail, "exited (adopted: exit status unknown)") || !strings.Contains(s.Detail, "fake dockerd serving") {
		t.Errorf("dockerd after kill -9: %+v, want error with what is known and the log's tail", s)
	}
	if got := testutil.ToFloat64(r.exitsTotal.WithLabelValues(Dockerd)); got != 1 {
		t.Errorf("daemon_exits_total{dockerd}: %v, want 1", got)
	}
	res = r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusStarted || !strings.Contains(res.Message, "spawned bundled dockerd") ||
		!strings.Contains(res.Message, fmt.Sprintf("adopted containerd (pid=%d)", cpid)) {
		t.Fatalf("Ensure after the kill: %+v, want started: dockerd spawned beside the adopted containerd", res)
	}
	if f.starts(Containerd) != 1 || f.starts(Dockerd) != 2 {
		t.Fatalf("starts: containerd %d, dockerd %d; want 1 and 2", f.starts(Containerd), f.starts(Dockerd))
	}
	newDockerd, _ := r.PID(Dockerd)

	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.events(t); !slices.Equal(got, []string{"dockerd", "containerd"}) {
		t.Errorf("terminated in order %v, want [dockerd containerd]: the adopted containerd stopped by SIGTERM too", got)
	}
	for _, pid := range []int{cpid, newDockerd} {
		if !processGone(pid) {
			t.Errorf("pid %d alive after Shutdown", pid)
		}
	}
	r.mu.Lock()
	how := r.children[Containerd].exitStatus()
	r.mu.Unlock()
	if how != "exited after SIGTERM (adopted: exit status unknown)" {
		t.Errorf("the adopted containerd's end: %q", how)
	}
	if _, err := os.Stat(filepath.Join(cfg.ContainerdState, "containerd.pid")); !os.IsNotExist(err) {
		t.Errorf("containerd's pid file after Shutdown: %v, want it removed", err)
	}
}

// TestAdoptFindsAHungDaemonByItsPidFile: a containerd that runs but does
// not serve its socket is found by the agent's pid file, adopted, and
// waited for rather than doubled.
func TestAdoptFindsAHungDaemonByItsPidFile(t *testing.T) {
	f := newFakes(t)
	f.set(Containerd, "hang")
	cfg := adoptConfig(t, f)
	cfg.ContainerdTimeout = 50 * time.Millisecond
	// What the earlier agent did before it died: spawned containerd,
	// recorded its pid.
	if err := os.MkdirAll(cfg.ContainerdState, 0o755); err != nil {
		t.Fatal(err)
	}
	stray := exec.Command(filepath.Join(cfg.RuntimeBinDir, "containerd"), "--config", cfg.ContainerdConfig,
		"--address", cfg.ContainerdSocket, "--state", cfg.ContainerdState, "--root", cfg.ContainerdRoot)
	if err := f.exec(stray); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !processGone(stray.Process.Pid) {
			t.Errorf("the stray containerd outlived the test; killed")
			_ = stray.Process.Kill()
		}
		_ = stray.Wait()
	})
	if err := writePIDFile(filepath.Join(cfg.ContainerdState, "containerd.pid"), stray.Process.Pid); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "the stray containerd to start", func() bool { return f.recorded(Containerd, stray.Process.Pid) })

	r := startRuntime(t, cfg)
	if pid, ok := r.PID(Containerd); !ok || pid != stray.Process.Pid {
		t.Fatalf("PID(containerd): %d, %v; want the stray %d", pid, ok, stray.Process.Pid)
	}
	close(controlTimer(r, Containerd, waitReady))
	res := r.Ensure(context.Background(), true)
	for _, want := range []string{
		fmt.Sprintf("waiting for adopted containerd (pid=%d)", stray.Process.Pid),
		"containerd socket not ready after 50ms",
		"spawned bundled dockerd",
	} {
		if !strings.Contains(res.Message, want) {
			t.Errorf("message %q lacks %q", res.Message, want)
		}
	}
	if !res.Ready || res.Status != StatusStarted || f.starts(Containerd) != 1 {
		t.Fatalf("Ensure: %+v with %d containerd started; want started, containerd not doubled", res, f.starts(Containerd))
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !processGone(stray.Process.Pid) {
		t.Fatal("the adopted containerd outlived Shutdown")
	}
}

// TestAdoptNeverSignalsWhatItCannotProve: the processes named by pid
// files or serving the sockets but not proven to be the daemon (another
// binary, or the binary started for another socket) are never adopted nor
// signalled; a pid file that names no process of the binary is stale and
// removed.
func TestAdoptNeverSignalsWhatItCannotProve(t *testing.T) {
	sleep := testenv.RequireBinary(t, "sleep")
	f := newFakes(t)
	cfg := adoptConfig(t, f)
	for _, d := range []string{cfg.ContainerdState, cfg.DockerExecRoot, filepath.Dir(cfg.DockerSocket)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	start := func(cmd *exec.Cmd, run func(*exec.Cmd) error) *exec.Cmd {
		t.Helper()
		if err := run(cmd); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		return cmd
	}
	// Another binary, named by containerd's pid file (a reused pid).
	other := start(exec.Command(sleep, "600"), (*exec.Cmd).Start)
	if err := writePIDFile(filepath.Join(cfg.ContainerdState, "containerd.pid"), other.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// The dockerd binary serving the docker socket, but started with
	// other flags than the agent's: not provably the agent's dockerd.
	foreign := start(exec.Command(filepath.Join(cfg.RuntimeBinDir, "dockerd"), "-H", "unix://"+cfg.DockerSocket), f.exec)
	waitUntil(t, time.Minute, "the foreign dockerd to serve", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return pingDocker(ctx, cfg.DockerSocket) == nil
	})
	// docker.pid names it too (as another dockerd sharing the exec root
	// would): the configured binary, so its pid file is left alone.
	dockerPID := filepath.Join(cfg.DockerExecRoot, "docker.pid")
	if err := writePIDFile(dockerPID, foreign.Process.Pid); err != nil {
		t.Fatal(err)
	}

	r := startRuntime(t, cfg)
	for _, name := range []string{Containerd, Dockerd} {
		if pid, ok := r.PID(name); ok {
			t.Errorf("PID(%s): adopted %d", name, pid)
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.ContainerdState, "containerd.pid")); !os.IsNotExist(err) {
		t.Errorf("containerd's pid file naming %s: %v, want it removed as stale", sleep, err)
	}
	if pid, err := readPIDFile(dockerPID); err != nil || pid != foreign.Process.Pid {
		t.Errorf("docker.pid: %d, %v; want it left naming the foreign dockerd", pid, err)
	}
	res := r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusReused || res.Message != "docker socket already ready; docker socket ready" {
		t.Errorf("Ensure beside a foreign dockerd: %+v, want reused, nothing started", res)
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*exec.Cmd{other, foreign} {
		if processGone(p.Process.Pid) {
			t.Errorf("%s (pid %d) was stopped, though never proven the agent's", p.Path, p.Process.Pid)
		}
	}
	if got := f.events(t); len(got) != 0 {
		t.Errorf("SIGTERM reached %v", got)
	}
}

// TestAdoptRemovesAStalePidFile: a pid file naming a process that is gone
// is removed, or garbage, so the next dockerd does not refuse to start.
func TestAdoptRemovesAStalePidFile(t *testing.T) {
	f := newFakes(t)
	cfg := adoptConfig(t, f)
	if err := os.MkdirAll(cfg.DockerExecRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cfg.ContainerdState, 0o755); err != nil {
		t.Fatal(err)
	}
	gone := exec.Command(testenv.RequireBinary(t, "true"))
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dockerPID := filepath.Join(cfg.DockerExecRoot, "docker.pid")
	if err := writePIDFile(dockerPID, gone.Process.Pid); err != nil {
		t.Fatal(err)
	}
	containerdPID := filepath.Join(cfg.ContainerdState, "containerd.pid")
	if err := os.WriteFile(containerdPID, []byte("not a pid"), 0o644); err != nil {
		t.Fatal(err)
	}
	startRuntime(t, cfg)
	for _, p := range []string{dockerPID, containerdPID} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s: %v, want the stale pid file removed", p, err)
		}
	}
}

// TestStalePIDWithoutAnExecutable: a pid file whose pid now names a
// process with no executable (a kernel thread, here kthreadd, pid 2; a
// zombie is the same) names no daemon: the file is stale. Kept, it would
// make the next dockerd refuse to start.
func TestStalePIDWithoutAnExecutable(t *testing.T) {
	comm, err := os.ReadFile("/proc/2/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "kthreadd" {
		t.Fatalf("pid 2 is not kthreadd here (%q, %v): no kernel thread at a known pid", comm, err)
	}
	r := startRuntime(t, adoptConfig(t, newFakes(t)))
	for _, service := range []string{Containerd, Dockerd} {
		if !r.stalePID(service, 2) {
			t.Errorf("%s: a pid file naming a kernel thread is not stale", service)
		}
	}
	if r.stalePID(Dockerd, os.Getpid()) {
		t.Error("a pid file naming a live dockerd (this test binary stands in for it) is stale")
	}
}
