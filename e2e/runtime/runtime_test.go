package runtime

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"iter"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// imageSize is the data volume's image file: sparse, and above
// mkfs.btrfs's minimum.
const imageSize = 1 << 30

// env is one agent's world: its directory, its image file, the registry
// it pulls from, the binaries the test uses.
type env struct {
	bins       map[string]string
	agent      *agentProc
	reg        *testregistry.Registry
	ref        string // the test image in the registry
	imageID    string // its config digest, which docker reports as its ID
	dockerHost string // the endpoint ensure gave, as DOCKER_HOST
	marker     []byte // what the test wrote on the data volume
}

// setup gates the test (root, isolation, binaries), hides the host state
// the daemons write at fixed paths, and prepares the agent's directory:
// links to the system's runtime binaries, a blank image file, and the
// registry with the test image.
func setup(t testing.TB) *env {
	t.Helper()
	testenv.RequireIsolated(t)
	e := &env{bins: map[string]string{}}
	for _, b := range []string{"containerd", "dockerd", "containerd-shim-runc-v2", "runc", "docker", "mkfs.btrfs", "busybox"} {
		e.bins[b] = testenv.RequireBinary(t, b)
	}
	agenttest.Binary(t)
	t.Logf("agent built in %s (race detector: %v)", suite.built.Round(time.Millisecond), agenttest.RaceAgent())
	testenv.HideDaemonState(t)
	testenv.RemoveNewDockerCgroups(t)

	dir, err := os.MkdirTemp(suite.dir, "a")
	if err != nil {
		t.Fatal(err)
	}
	a := &agentProc{Agent: &agenttest.Agent{Dir: dir}}
	a.image = a.Path("data.img")
	if err := os.Mkdir(a.Path("bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"containerd", "dockerd", "containerd-shim-runc-v2", "runc"} {
		if err := os.Symlink(e.bins[b], a.Path("bin/"+b)); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(a.image)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(imageSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	a.writeToken(t)
	e.agent = a
	t.Cleanup(func() { e.cleanup(t) })

	e.reg = testregistry.New(t)
	img := busyboxImage(t, e.bins["busybox"])
	e.ref = e.reg.Host() + "/e2e/busybox:1"
	e.reg.Push(t, e.ref, img)
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	e.imageID = cfg.String()

	// A free loopback port: the namespace is the test's own, so nobody
	// takes it between this close and the agent's bind.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.dockerPort = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return e
}

// allowSandboxes lets the agent's sandboxes start: a sandbox's root is an
// unprivileged user of this machine, so the path to its root filesystem,
// under the agent's state dir, must be searchable (MkdirTemp made the
// directories above it 0700).
func (e *env) allowSandboxes(tb testing.TB) {
	tb.Helper()
	for _, d := range []string{suite.dir, e.agent.Dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			tb.Fatal(err)
		}
	}
}

// cleanup ends whatever the test left running, unmounts what is mounted
// under the agent's directory and detaches its loop device, and fails
// the test for anything that should not have been left.
func (e *env) cleanup(t testing.TB) {
	a := e.agent
	switch {
	case a.Running() && !t.Failed():
		t.Errorf("the agent was still running at the end; killed:\n%s", a.logTail())
	case t.Failed():
		t.Logf("agent and daemon logs:\n%s", a.logTail())
	}
	_ = a.Kill()
	// Processes of the agent's (daemons, shims, containers), by pid.
	if left := processesOf(suite.dir); len(left) > 0 {
		t.Errorf("processes left, killed now:\n%s", procList(left))
		for _, p := range left {
			_ = unix.Kill(p.pid, unix.SIGKILL)
		}
		agenttest.WaitFor(time.Minute, func() bool { return len(processesOf(suite.dir)) == 0 })
	}
	if failed := agenttest.UnmountUnder(a.Dir); len(failed) > 0 {
		t.Errorf("could not unmount: %v", failed)
	}
	// The agent's loop devices are autoclear: with nothing mounted from
	// them and no agent holding them open, the kernel detaches them.
	if loops, errs := agenttest.ReleaseLoops(a.image, time.Minute); len(loops) > 0 {
		t.Errorf("%v still attached to %s with nothing mounted from it: not autoclear; detached: %v", loops, a.image, errs)
	}
}

func procList(ps []proc) string {
	var lines []string
	for _, p := range ps {
		lines = append(lines, "  "+p.String())
	}
	return strings.Join(lines, "\n")
}

// TestAgentRuntime is a user's session with the agent's runtime, then
// two restarts on the same data volume. Each step builds on the ones
// before; after a failure the test goes on only if the agent is down,
// since each restart starts one of its own.
func TestAgentRuntime(t *testing.T) {
	e := setup(t)
	a := e.agent
	steps := []struct {
		name string
		f    func(*testing.T)
	}{
		{"probe starts nothing", e.probeStartsNothing},
		{"cold ensure", e.coldEnsure},
		{"status", e.checkStatus},
		{"docker CLI through the proxy", e.dockerSession},
		{"the proxy wants the token", e.proxyWantsToken},
		{"daemon logs", e.daemonLogs},
		{"metrics", e.metrics},
		{"dockerd killed", e.dockerdKilled},
		{"containerd killed", e.containerdKilled},
		{"SIGTERM", e.shutdown},
		{"restart with the volume mounted", func(t *testing.T) { e.restart(t, false) }},
		{"restart after a reboot", func(t *testing.T) { e.restart(t, true) }},
		{"nothing outside the given directories", e.checkHostState},
	}
	for _, s := range steps {
		began := time.Now()
		ok := t.Run(s.name, s.f)
		t.Logf("%-32s %s", s.name, time.Since(began).Round(time.Millisecond))
		if !ok && a.Running() {
			return
		}
	}
	if a.Running() {
		t.Fatal("the agent runs after the last step")
	}
}

// probeStartsNothing: before any start, a probe-only ensure answers
// failed, and starts no daemon and does not touch the data device.
func (e *env) probeStartsNothing(t *testing.T) {
	a := e.agent
	a.start(t)
	res := a.ensure(t, false)
	if res.Status != "failed" || res.Ready {
		t.Errorf("probe before any start: %+v, want failed and not ready", res)
	}
	if kids := daemons(a); len(kids) > 0 {
		t.Errorf("a probe started %v", kids)
	}
	if loops := agenttest.LoopsBacking(a.image); len(loops) > 0 {
		t.Errorf("a probe attached the data device to %v", loops)
	}
	st := a.status(t)
	for _, name := range []string{"containerd", "dockerd", "data-volume"} {
		if s := service(t, st, name); s.Status != "not_ready" {
			t.Errorf("%s before any start: %+v, want not_ready", name, s)
		}
	}
}

// coldEnsure: concurrent ensures over HTTP start the runtime once; the
// caller that drove the start hears started, every other one reused, all
// with the Docker endpoint of the agent's proxy. The daemons are the
// agent's children, and the volume is the image file's btrfs.
func (e *env) coldEnsure(t *testing.T) {
	a := e.agent
	const callers = 8
	results := make([]*api.RuntimeEnsureResponse, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	began := time.Now()
	for i := range results {
		wg.Go(func() { results[i], errs[i] = a.tryEnsure(t, true) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%v\n%s", err, a.logTail())
	}
	t.Logf("cold ensure, %d callers: %s", callers, time.Since(began).Round(time.Millisecond))
	count := map[api.RuntimeEnsureResponseStatus]int{}
	for _, r := range results {
		count[r.Status]++
		if !r.Ready || r.Endpoint != a.dockerListen() {
			t.Fatalf("ensure: %+v, want ready with endpoint %s", r, a.dockerListen())
		}
		if r.Status == "started" {
			t.Logf("started: %s", r.Message)
			for _, want := range []string{"attached " + a.image, "formatted", "as btrfs", "mounted @docker", "mounted @containerd"} {
				if !strings.Contains(r.Message, want) {
					t.Errorf("the start's message does not say %q: %s", want, r.Message)
				}
			}
		}
	}
	if count["started"] != 1 || count["reused"] != callers-1 {
		t.Fatalf("answers %v, want 1 started and %d reused", count, callers-1)
	}
	if r := a.ensure(t, true); r.Status != "reused" || !r.Ready {
		t.Fatalf("the next ensure: %+v, want reused", r)
	}
	e.dockerHost = results[0].Endpoint

	kids := daemons(a)
	if kids["containerd"] == 0 || kids["dockerd"] == 0 {
		t.Fatalf("the agent's daemons: %v, want containerd and dockerd", kids)
	}
	if pid := pidFile(t, a.Path("docker-exec/docker.pid")); pid != kids["dockerd"] {
		t.Errorf("dockerd's pid file says %d, the agent's child is %d", pid, kids["dockerd"])
	}
}

// daemons maps the names of the agent's children that are containerd or
// dockerd to their pids.
func daemons(a *agentProc) map[string]int {
	kids := childrenOf(a.PID())
	maps.DeleteFunc(kids, func(name string, _ int) bool { return name != "containerd" && name != "dockerd" })
	return kids
}

func pidFile(t testing.TB, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

var freeBytesRE = regexp.MustCompile(`(\d+) bytes free`)

// checkStatus: status says both daemons are ready and the data volume is
// mounted btrfs with free space, and mountinfo agrees: the image file's
// loop device, its top level and the two subvolumes where configured.
func (e *env) checkStatus(t *testing.T) {
	a := e.agent
	st := a.status(t)
	if !st.ContainerdReady || !st.DockerReady || st.Endpoint != a.dockerListen() || st.Detail != "docker socket ready" {
		t.Errorf("status: %+v", st)
	}
	for _, name := range []string{"containerd", "dockerd", "data-volume"} {
		if s := service(t, st, name); s.Status != "ready" {
			t.Errorf("%s: %+v, want ready", name, s)
		}
	}
	vol := service(t, st, "data-volume")
	loops := agenttest.LoopsBacking(a.image)
	if len(loops) != 1 {
		t.Fatalf("loop devices over %s: %v, want one", a.image, loops)
	}
	for _, want := range []string{"device " + a.image, "filesystem btrfs", "; mounted", "btrfs on " + loops[0] + " mounted at " + a.Path("data")} {
		if !strings.Contains(vol.Detail, want) {
			t.Errorf("data-volume detail does not say %q: %s", want, vol.Detail)
		}
	}
	m := freeBytesRE.FindStringSubmatch(vol.Detail)
	if m == nil {
		t.Fatalf("data-volume detail gives no free bytes: %s", vol.Detail)
	}
	if free, _ := strconv.ParseUint(m[1], 10, 64); free == 0 || free > imageSize {
		t.Errorf("data volume: %d bytes free on a %d-byte image", free, imageSize)
	}
	for point, root := range map[string]string{a.Path("data"): "/", a.Path("docker"): "/@docker", a.Path("containerd"): "/@containerd"} {
		m, ok := agenttest.MountAt(point)
		if !ok || m.FSType != "btrfs" || m.Source != loops[0] || m.Root != root {
			t.Errorf("mount on %s: %v (found %v), want btrfs %s root %s", point, m, ok, loops[0], root)
		}
	}
}

// dockerSession is what a user does with the docker CLI pointed at the
// endpoint ensure gave: version, pull from a registry, run, run with
// stdin to its end, follow logs while exec'ing into the container.
func (e *env) dockerSession(t *testing.T) {
	a := e.agent
	if !strings.HasPrefix(e.dockerHost, "tcp://127.0.0.1:") {
		t.Fatalf("endpoint %q is not the proxy's loopback listener", e.dockerHost)
	}
	// The server is the dockerd the agent started.
	out, err := exec.Command(e.bins["dockerd"], "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	server := strings.TrimSpace(e.docker(t, nil, "version", "--format", "{{.Server.Version}}"))
	if server == "" || !strings.Contains(string(out), "version "+server+",") {
		t.Errorf("docker version: server %q, but dockerd --version says %q", server, out)
	}
	client := strings.TrimSpace(e.docker(t, nil, "version", "--format", "{{.Client.Version}}"))
	t.Logf("docker CLI %s (%s), server %s", client, e.bins["docker"], server)

	// Pull over plain HTTP from 127.0.0.1: dockerd needs no
	// --insecure-registry for 127.0.0.0/8.
	before := e.reg.Gets("/manifests/")
	e.docker(t, nil, "pull", "-q", e.ref)
	if e.reg.Gets("/manifests/") == before {
		t.Error("docker pull did not fetch a manifest from the test registry")
	}
	if id := strings.TrimSpace(e.docker(t, nil, "image", "inspect", "--format", "{{.Id}}", e.ref)); id != e.imageID {
		t.Errorf("pulled image id %s, want the pushed image's %s", id, e.imageID)
	}

	if out := e.docker(t, nil, "run", "--rm", e.ref, "echo", "hi"); out != "hi\n" {
		t.Errorf("docker run echo hi: %q", out)
	}

	// stdin to its end through the proxy: the CLI half-closes, cat sees
	// EOF and ends, and every byte comes back.
	var in bytes.Buffer
	for i := 0; in.Len() < 4<<20; i++ {
		fmt.Fprintf(&in, "line %d of the standard input\n", i)
	}
	want := sha256.Sum256(in.Bytes())
	began := time.Now()
	echoed := e.docker(t, bytes.NewReader(in.Bytes()), "run", "-i", "--rm", e.ref, "cat")
	if got := sha256.Sum256([]byte(echoed)); got != want {
		t.Errorf("docker run -i cat: %d bytes back, want the %d sent", len(echoed), in.Len())
	}
	t.Logf("docker run -i cat of %d bytes: %s", in.Len(), time.Since(began).Round(time.Millisecond))

	// docker logs -f streams while the container runs: the first line
	// arrives before the container is told (by docker exec) to go on.
	name := "e2e-logs"
	e.docker(t, nil, "run", "-d", "--name", name, e.ref, "sh", "-c",
		"echo first; while [ ! -e /tmp/go ]; do sleep 0.02; done; echo second")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logs := e.dockerCmd(ctx, "logs", "-f", name)
	stdout, err := logs.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := logs.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func() string {
		select {
		case l, ok := <-lines:
			if !ok {
				return "(end)"
			}
			return l
		case <-ctx.Done():
			return "(timeout)"
		}
	}
	if l := next(); l != "first" {
		t.Fatalf("docker logs -f: first line %q", l)
	}
	e.docker(t, nil, "exec", name, "touch", "/tmp/go")
	if l := next(); l != "second" {
		t.Errorf("docker logs -f after exec: %q, want second", l)
	}
	if l := next(); l != "(end)" {
		t.Errorf("docker logs -f went on after the container ended: %q", l)
	}
	if err := logs.Wait(); err != nil {
		t.Errorf("docker logs -f: %v", err)
	}
	if code := strings.TrimSpace(e.docker(t, nil, "wait", name)); code != "0" {
		t.Errorf("the logs container exited %s", code)
	}
	e.docker(t, nil, "rm", name)

	// Something of the user's on the volume, for the restarts to find.
	e.marker = fmt.Appendf(nil, "written at %s\n", time.Now().Format(time.RFC3339Nano))
	if err := os.WriteFile(a.Path("docker/e2e-marker"), e.marker, 0o644); err != nil {
		t.Fatal(err)
	}
}

// daemonLogs: the last lines of dockerd's log as text, and containerd's
// log followed while a container starts.
func (e *env) daemonLogs(t *testing.T) {
	a := e.agent
	tail := 5
	var contentType string // the SDK does not hand it over: seen on the way
	sdk := a.SDK(t, client.WithTransport(func(base http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			resp, err := base.RoundTrip(req)
			if err == nil {
				contentType = resp.Header.Get("Content-Type")
			}
			return resp, err
		})
	}))
	var lines []string
	for line, err := range sdk.RuntimeLogs(context.Background(), "dockerd", client.LogsOptions{Tail: tail}) {
		if err != nil {
			t.Fatalf("dockerd log after %q: %v", lines, err)
		}
		lines = append(lines, line)
	}
	text := strings.Join(lines, "\n")
	if !strings.HasPrefix(contentType, "text/plain") {
		t.Fatalf("dockerd log: %s: %s", contentType, text)
	}
	if text == "" || len(lines) > tail || !strings.Contains(text, "level=") {
		t.Errorf("dockerd log, tail=%d: %d lines, want 1 to %d of dockerd's:\n%s", tail, len(lines), tail, text)
	}

	// Follow containerd's log from its end; a container's start shows up
	// in it (its shim's path names the container).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := readAsItComes(a.SDK(t).RuntimeLogs(ctx, "containerd", client.LogsOptions{Tail: tail, Follow: true}))
	id := strings.TrimSpace(e.docker(t, nil, "run", "-d", e.ref, "echo", "started"))
	if !f.waitFor(ctx, id) {
		t.Fatalf("container %s never appeared in the followed containerd log; it ended %v with:\n%s", id, f.ended(), f.text())
	}
	e.docker(t, nil, "wait", id)
	e.docker(t, nil, "rm", id)
}

// roundTripFunc is a function as an http.RoundTripper.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// followed is a followed log read as it comes.
type followed struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	err    error         // how the body ended
	more   chan struct{} // a send (never blocking) after each read
	closed chan struct{} // closed when the body ends
}

// readAsItComes reads a followed log's lines in the background; its end
// without an error is io.EOF.
func readAsItComes(lines iter.Seq2[string, error]) *followed {
	f := &followed{more: make(chan struct{}, 1), closed: make(chan struct{})}
	go func() {
		defer close(f.closed)
		end := io.EOF
		for line, err := range lines {
			f.mu.Lock()
			if err != nil {
				end = err
			} else {
				f.buf.WriteString(line + "\n")
			}
			f.mu.Unlock()
			select {
			case f.more <- struct{}{}:
			default:
			}
		}
		f.mu.Lock()
		f.err = end
		f.mu.Unlock()
	}()
	return f
}

func (f *followed) text() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buf.String()
}

// ended reports how the body ended, or nil while it goes on.
func (f *followed) ended() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// waitFor waits until what was read contains s, the body ends, or ctx ends.
func (f *followed) waitFor(ctx context.Context, s string) bool {
	for {
		if strings.Contains(f.text(), s) {
			return true
		}
		select {
		case <-f.more:
		case <-f.closed:
			return strings.Contains(f.text(), s)
		case <-ctx.Done():
			return false
		}
	}
}

// metrics: the agent's /metrics counts the ensures and the proxy's bytes.
func (e *env) metrics(t *testing.T) {
	r, err := e.agent.Client(t).GetMetricsWithResponse(context.Background())
	if err != nil || r.StatusCode() != http.StatusOK {
		t.Fatalf("GET /metrics: %v %v", err, r)
	}
	samples := map[string]float64{}
	for _, l := range strings.Split(string(r.Body), "\n") {
		if name, v, ok := strings.Cut(l, " "); ok && !strings.HasPrefix(l, "#") {
			samples[name], _ = strconv.ParseFloat(v, 64)
		}
	}
	for name, min := range map[string]float64{
		`arcbox_agent_runtime_ensure_total{status="started"}`:            1,
		`arcbox_agent_runtime_ensure_total{status="reused"}`:             8,
		`arcbox_agent_docker_proxy_bytes_total{direction="to_docker"}`:   4 << 20,
		`arcbox_agent_docker_proxy_bytes_total{direction="from_docker"}`: 4 << 20,
		`arcbox_agent_docker_proxy_auth_refused_total`:                   3,
	} {
		if v, ok := samples[name]; !ok || v < min {
			t.Errorf("%s = %v (present %v), want at least %v", name, v, ok, min)
		}
	}
	if v := samples[`arcbox_agent_runtime_ensure_total{status="started"}`]; v != 1 {
		t.Errorf("ensure started %v times, want 1", v)
	}
}

// proxyWantsToken: the proxy's TCP listener refuses a client without the
// bearer token, or with a wrong one, with a 401 the docker CLI prints, and
// lets in one that sends it (curl here, the CLI in every other step); the
// agent's log never holds it.
func (e *env) proxyWantsToken(t *testing.T) {
	a := e.agent
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wrong := filepath.Join(t.TempDir(), "wrong")
	if err := os.Mkdir(wrong, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(wrong, "config.json"), []byte(`{"HttpHeaders": {"Authorization": "Bearer not-the-token"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for config, want := range map[string]string{t.TempDir(): "no Authorization header", wrong: "wrong bearer token"} {
		cmd := exec.CommandContext(ctx, e.bins["docker"], "ps")
		cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.dockerHost, "DOCKER_CONFIG="+config)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("docker ps without the token: %v, %q; want the proxy's 401 saying %q", err, out, want)
		}
	}
	curl := testenv.RequireBinary(t, "curl")
	url := fmt.Sprintf("http://127.0.0.1:%d/_ping", a.dockerPort)
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "401"},
		{[]string{"-H", "Authorization: Bearer " + a.token}, "200"},
	} {
		args := append([]string{"-s", "-o", "/dev/null", "-w", "%{http_code}"}, append(c.args, url)...)
		if out, err := exec.CommandContext(ctx, curl, args...).Output(); string(out) != c.want {
			t.Errorf("curl %s (token sent: %v): status %q (%v), want %s", url, c.args != nil, out, err, c.want)
		}
	}
	if b, err := os.ReadFile(a.LogPath()); err != nil || bytes.Contains(b, []byte(a.token)) {
		t.Errorf("the agent's log holds the token (or cannot be read: %v)", err)
	}
}

// shutdown: SIGTERM with a log follow still open; the agent stops its
// daemons and exits 0. What it leaves mounted is reported.
func (e *env) shutdown(t *testing.T) {
	a := e.agent
	kids := daemons(a)
	if len(kids) != 2 {
		t.Fatalf("the agent's daemons before SIGTERM: %v", kids)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream := readAsItComes(a.SDK(t).RuntimeLogs(ctx, "dockerd", client.LogsOptions{Follow: true}))

	took, exit := a.terminate(t, 2*time.Minute)
	t.Logf("exit %v, %s after SIGTERM", exit, took.Round(time.Millisecond))
	if exit != nil {
		t.Errorf("the agent's exit after SIGTERM: %v, want status 0", exit)
	}
	// The agent has exited, so the stream has ended; the reader notices
	// at once.
	select {
	case <-stream.closed:
		if err := stream.ended(); err != io.EOF {
			t.Logf("the followed log ended with %v", err)
		}
	case <-time.After(time.Minute):
		t.Error("a followed log is still open after the agent exited")
	}
	for name, pid := range kids {
		if alive(pid) {
			t.Errorf("%s (pid %d) is alive after the agent exited", name, pid)
		}
	}
	if left := processesOf(suite.dir); len(left) > 0 {
		t.Errorf("processes left after the agent exited:\n%s", procList(left))
	}
	for _, s := range []string{a.Socket(), a.Path("docker.sock"), a.Path("containerd.sock")} {
		if c, err := net.Dial("unix", s); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections", s)
		}
	}
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a.dockerPort)); err == nil {
		c.Close()
		t.Error("the Docker proxy's port still accepts connections")
	}
	e.checkAgentLog(t)
	e.checkStopsGraceful(t)
	e.checkMountsLeft(t)
}

// checkAgentLog: the run that just ended reported no data race (its
// binary has the detector when the test does) and no panic.
func (e *env) checkAgentLog(t *testing.T) {
	a := e.agent
	run, err := a.RunLog()
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"WARNING: DATA RACE", "panic:"} {
		if bytes.Contains(run, []byte(bad)) {
			t.Errorf("the agent's output has %q:\n%s", bad, run)
		}
	}
}

// checkStopsGraceful: the agent stopped both daemons with SIGTERM, and
// they exited by themselves (status 0), not by its SIGKILL.
func (e *env) checkStopsGraceful(t *testing.T) {
	stops := e.agent.daemonStops(t)
	for _, name := range []string{"dockerd", "containerd"} {
		if stops[name] != "exit status 0" {
			t.Errorf("%s, stopped by the agent: %q, want exit status 0 (stops logged: %v)", name, stops[name], stops)
		}
	}
}

// checkMountsLeft reports what the agent left mounted. By design (package
// disk never unmounts) that is the data volume's three mounts and
// nothing else: dockerd, stopped cleanly, unmounts its own.
func (e *env) checkMountsLeft(t *testing.T) {
	a := e.agent
	left := agenttest.MountsUnder(a.Dir)
	var names []string
	for _, m := range left {
		names = append(names, m.String())
	}
	t.Logf("left mounted by the agent:\n  %s", strings.Join(names, "\n  "))
	want := []string{a.Path("containerd"), a.Path("data"), a.Path("docker")}
	var points []string
	for _, m := range left {
		points = append(points, m.Point)
	}
	slices.Sort(points)
	if !slices.Equal(points, want) {
		t.Errorf("mounted after the agent exited: %v, want only the data volume's %v", points, want)
	}
}

// checkHostState: the daemons write a few things at fixed paths whatever
// their flags (hidden by tmpfs in this namespace); the agent, given every
// path, must write nothing outside them: three runs of it have had their
// chance.
func (e *env) checkHostState(t *testing.T) {
	for _, d := range []string{"/run", "/opt", "/etc/docker"} {
		_ = filepath.WalkDir(d, func(p string, _ os.DirEntry, err error) error {
			if err == nil && strings.Contains(p, "arcbox") {
				t.Errorf("the agent wrote %s, outside every directory it was given", p)
			}
			return nil
		})
	}
}

// restart starts the agent again on the same image file. Without reboot
// the volume is still mounted, as the last agent left it; with it, the
// test first unmounts everything, as a VM's reboot would, and the loop
// device must go by itself. Either way ensure starts the runtime again
// without formatting, and what was there before is there.
func (e *env) restart(t *testing.T, reboot bool) {
	a := e.agent
	if reboot {
		if failed := agenttest.UnmountUnder(a.Dir); len(failed) > 0 {
			t.Fatalf("unmount: %v", failed)
		}
		if !agenttest.WaitFor(time.Minute, func() bool { return len(agenttest.LoopsBacking(a.image)) == 0 }) {
			t.Errorf("the loop device %v stayed attached with nothing mounted: not autoclear", agenttest.LoopsBacking(a.image))
		}
	}
	var extra []string
	if !reboot {
		// This run is stopped while a client is slow to send a request.
		extra = []string{"--shutdown-timeout", "1s"}
	}
	a.start(t, extra...)
	res := a.ensure(t, true)
	if res.Status != "started" || !res.Ready || res.Endpoint != a.dockerListen() {
		t.Fatalf("ensure after the restart: %+v, want started", res)
	}
	t.Logf("started: %s", res.Message)
	if strings.Contains(res.Message, "formatted") {
		t.Errorf("the restart formatted the volume again: %s", res.Message)
	}
	wantNote := "data volume already mounted"
	if reboot {
		loops := agenttest.LoopsBacking(a.image)
		if len(loops) != 1 {
			t.Fatalf("loop devices over %s: %v, want one", a.image, loops)
		}
		wantNote = "mounted " + loops[0] + " at " + a.Path("data")
	}
	if !strings.Contains(res.Message, wantNote) {
		t.Errorf("the start's message does not say %q: %s", wantNote, res.Message)
	}
	if b, err := os.ReadFile(a.Path("docker/e2e-marker")); err != nil || !bytes.Equal(b, e.marker) {
		t.Errorf("the file written before: %q, %v; want %q", b, err, e.marker)
	}
	// dockerd's own state is on the volume too: the image is there, and
	// runs, without asking the registry.
	before := e.reg.Gets("/manifests/")
	if id := strings.TrimSpace(e.docker(t, nil, "image", "inspect", "--format", "{{.Id}}", e.ref)); id != e.imageID {
		t.Errorf("image after the restart: %s, want %s", id, e.imageID)
	}
	if out := e.docker(t, nil, "run", "--rm", e.ref, "echo", "again"); out != "again\n" {
		t.Errorf("docker run after the restart: %q", out)
	}
	if e.reg.Gets("/manifests/") != before {
		t.Error("the restarted dockerd asked the registry for an image it had")
	}
	st := a.status(t)
	if s := service(t, st, "data-volume"); s.Status != "ready" {
		t.Errorf("data volume after the restart: %+v", s)
	}
	if !reboot {
		// A client that sends half a request and stalls: the agent waits
		// --shutdown-timeout for it, which is about requests; the daemons
		// still get their own grace after SIGTERM.
		conn, err := net.Dial("unix", a.Socket())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		body := `{"message":"slow"}`
		fmt.Fprintf(conn, "POST /v1/ping HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:3])
		// The listener accepts in order: once a later connection is
		// answered, the server holds the slow one too.
		if r, err := a.Client(t).GetLivezWithResponse(context.Background()); err != nil || r.StatusCode() != http.StatusOK {
			t.Fatalf("livez: %v %v", err, r)
		}
	}
	took, exit := a.terminate(t, 2*time.Minute)
	t.Logf("exit %v, %s after SIGTERM", exit, took.Round(time.Millisecond))
	if exit != nil {
		t.Errorf("the agent's exit after SIGTERM: %v, want status 0", exit)
	}
	if left := processesOf(suite.dir); len(left) > 0 {
		t.Errorf("processes left after the agent exited:\n%s", procList(left))
	}
	e.checkAgentLog(t)
	e.checkStopsGraceful(t)
	e.checkMountsLeft(t)
}
