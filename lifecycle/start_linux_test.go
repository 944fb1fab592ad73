package lifecycle

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/startup"
)

// The start sequence, supervision and shutdown, with the test binary playing
// containerd and dockerd (see fakeMain): real processes, real sockets, no
// root needed.

type fakeVolume struct {
	mu    sync.Mutex
	err   error
	calls int
}

func (v *fakeVolume) Ensure(context.Context) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.calls++
	if v.err != nil {
		return "", v.err
	}
	return "data subvolumes already mounted", nil
}

func (v *fakeVolume) Service() Service {
	return Service{Name: "data-volume", Status: ServiceReady, Detail: "mounted"}
}

func fakeRuntime(t *testing.T, f *fakes, tweak func(*Config)) (*Runtime, Config) {
	t.Helper()
	cfg := testConfig(t, shortTempDir(t))
	cfg.StartProcess = f.exec
	// Long enough that only a hang reaches them: a test that needs a wait
	// to give up says when (controlTimer).
	cfg.StopGrace = time.Minute
	cfg.ContainerdTimeout = 2 * time.Minute
	cfg.DockerdTimeout = 2 * time.Minute
	if tweak != nil {
		tweak(&cfg)
	}
	return startRuntime(t, cfg), cfg
}

func TestStartColdThenReused(t *testing.T) {
	f := newFakes(t)
	reg := prometheus.NewRegistry()
	phases := startup.NewRuntime(reg, time.Now())
	vol := &fakeVolume{}
	r, cfg := fakeRuntime(t, f, func(c *Config) {
		c.Registerer = reg
		c.Phases = phases
		c.Volume = vol
		c.ExtraDockerdArgs = []string{"--storage-driver=vfs"}
	})

	assertReady(t, r, "before the first ensure", 0, 0)
	res := r.Ensure(context.Background(), true)
	assertReady(t, r, "after the cold ensure", 1, 1)
	if !res.Ready || res.Status != StatusStarted || res.Endpoint != "vsock:2375" {
		t.Fatalf("cold Ensure: got %+v, want ready, started, vsock:2375", res)
	}
	for _, want := range []string{"data subvolumes already mounted", "spawned bundled containerd (pid=", "spawned bundled dockerd (pid="} {
		if !strings.Contains(res.Message, want) {
			t.Errorf("message %q lacks %q", res.Message, want)
		}
	}
	if !strings.HasSuffix(res.Message, "; docker socket ready") {
		t.Errorf("message %q does not end with the status detail", res.Message)
	}

	cpid, ok := r.PID(Containerd)
	if !ok {
		t.Fatal("no containerd pid")
	}
	dpid, ok := r.PID(Dockerd)
	if !ok {
		t.Fatal("no dockerd pid")
	}
	args, path := f.args(t, Containerd, cpid)
	if want := []string{"--config", cfg.ContainerdConfig, "--address", cfg.ContainerdSocket, "--state", cfg.ContainerdState, "--root", cfg.ContainerdRoot}; !slices.Equal(args, want) {
		t.Errorf("containerd args:\n got %q\nwant %q", args, want)
	}
	if !strings.HasPrefix(path, cfg.RuntimeBinDir+":") || !strings.HasSuffix(path, ":"+standardPath) {
		t.Errorf("PATH %q: want the bin dir first and the standard directories last", path)
	}
	args, _ = f.args(t, Dockerd, dpid)
	if want := []string{
		"--host=unix://" + cfg.DockerSocket,
		"--containerd=" + cfg.ContainerdSocket,
		"--exec-root=" + cfg.DockerExecRoot,
		"--data-root=" + cfg.DockerDataRoot,
		"--userland-proxy=false",
		"--pidfile=" + filepath.Join(cfg.DockerExecRoot, "docker.pid"),
		"--storage-driver=vfs",
	}; !slices.Equal(args, want) {
		t.Errorf("dockerd args:\n got %q\nwant %q", args, want)
	}
	if b, err := os.ReadFile(cfg.ContainerdConfig); err != nil || string(b) != "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" {
		t.Errorf("containerd config: %q, %v", b, err)
	}

	st := r.Status(context.Background())
	if !st.ContainerdReady || !st.DockerReady || st.Detail != "docker socket ready" {
		t.Errorf("status: %+v", st)
	}
	if len(st.Services) != 3 || st.Services[2].Name != "data-volume" {
		t.Errorf("services: %+v, want containerd, dockerd, data-volume", st.Services)
	}

	res = r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusReused {
		t.Fatalf("second Ensure: got %+v, want reused", res)
	}
	if f.starts(Containerd) != 1 || f.starts(Dockerd) != 1 {
		t.Errorf("starts: containerd %d, dockerd %d; want 1 each", f.starts(Containerd), f.starts(Dockerd))
	}
	for _, phase := range []string{"data_volume", "containerd_ready", "dockerd_ready", "ensure"} {
		if _, ok := phases.End(phase); !ok {
			t.Errorf("phase %s not recorded", phase)
		}
	}
	if _, ok := phases.End("prerequisites"); ok {
		t.Error("prerequisites recorded with PrepareSystem false")
	}
	if got := testutil.ToFloat64(r.ensureTotal.WithLabelValues(StatusStarted)); got != 1 {
		t.Errorf("ensure_total{started}: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(r.ensureTotal.WithLabelValues(StatusReused)); got != 1 {
		t.Errorf("ensure_total{reused}: got %v, want 1", got)
	}

	// Shutdown: dockerd first, then containerd, and nothing left.
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.events(t); !slices.Equal(got, []string{"dockerd", "containerd"}) {
		t.Errorf("terminated in order %v, want [dockerd containerd]", got)
	}
	assertReady(t, r, "after Shutdown", 0, 0)
	for _, pid := range []int{cpid, dpid} {
		if !processGone(pid) {
			t.Errorf("pid %d still alive after Shutdown", pid)
		}
	}
	st = r.Status(context.Background())
	for _, s := range st.Services[:2] {
		if s.Status == ServiceError {
			t.Errorf("after Shutdown %s is in error (%s): a requested stop is not a failure", s.Name, s.Detail)
		}
	}
	if res := r.Ensure(context.Background(), true); res.Ready || res.Message != "runtime is shut down" {
		t.Errorf("Ensure after Shutdown: got %+v, want failed, runtime is shut down", res)
	}
	if res := r.Ensure(context.Background(), false); res.Ready || !strings.HasPrefix(res.Message, "docker socket missing") {
		t.Errorf("probe after Shutdown: got %+v, want failed, docker socket missing", res)
	}
}

func TestStartMissingBinariesFailsAtOnce(t *testing.T) {
	f := newFakes(t)
	r, cfg := fakeRuntime(t, f, func(c *Config) { c.DockerdTimeout = time.Hour })
	os.Remove(filepath.Join(cfg.RuntimeBinDir, "runc"))
	os.Remove(filepath.Join(cfg.RuntimeBinDir, "containerd-shim-runc-v2"))

	res := r.Ensure(context.Background(), true)
	wantDetail := "docker socket missing: " + cfg.DockerSocket + "; missing runtime binaries under " + cfg.RuntimeBinDir + ": containerd-shim-runc-v2, runc"
	if res.Ready || res.Status != StatusFailed || res.Message != wantDetail {
		t.Fatalf("got %+v,\nwant failed with message %q", res, wantDetail)
	}
	if n := len(f.commands); n != 0 {
		t.Fatalf("%d processes started, want none", n)
	}
	if st := r.Status(context.Background()); st.Detail != wantDetail {
		t.Fatalf("status detail: got %q, want %q", st.Detail, wantDetail)
	}
}

func TestStartDataVolumeFailureAborts(t *testing.T) {
	f := newFakes(t)
	vol := &fakeVolume{err: errors.New("data device missing: /dev/vdb")}
	r, cfg := fakeRuntime(t, f, func(c *Config) { c.Volume = vol; c.DockerdTimeout = time.Hour })
	res := r.Ensure(context.Background(), true)
	want := "data volume setup failed: data device missing: /dev/vdb; docker socket missing: " + cfg.DockerSocket
	if res.Ready || res.Status != StatusFailed || res.Message != want {
		t.Fatalf("got %+v,\nwant failed with message %q", res, want)
	}
	if len(f.commands) != 0 {
		t.Fatalf("started %v, want nothing", f.commands)
	}
	// A failed start is retried by the next call that asks.
	vol.mu.Lock()
	vol.err = nil
	vol.mu.Unlock()
	if res := r.Ensure(context.Background(), true); res.Status != StatusStarted {
		t.Fatalf("retry: got %+v, want started", res)
	}
}

func TestStartDockerdExitEndsTheWaitWithItsLog(t *testing.T) {
	f := newFakes(t)
	f.set(Dockerd, "exit")
	r, cfg := fakeRuntime(t, f, func(c *Config) { c.DockerdTimeout = time.Hour })
	res := r.Ensure(context.Background(), true) // returns only because the exit is noticed
	if res.Ready || res.Status != StatusFailed {
		t.Fatalf("got %+v, want failed", res)
	}
	for _, want := range []string{
		"dockerd exited before its socket " + cfg.DockerSocket + " came up: exit status 3 (pid ",
		"last lines of " + filepath.Join(cfg.LogDir, "dockerd.log") + ":\n",
	} {
		if !strings.Contains(res.Message, want) {
			t.Errorf("message lacks %q:\n%s", want, res.Message)
		}
	}
	if !strings.HasSuffix(res.Message, "fake dockerd: giving up") {
		t.Errorf("message does not end with the log's last line:\n%s", res.Message)
	}
	tail := res.Message[strings.Index(res.Message, ":\n")+2:]
	if n := strings.Count(tail, "\n") + 1; n != exitTailLines {
		t.Errorf("tail has %d lines, want %d:\n%s", n, exitTailLines, tail)
	}
	st := r.Status(context.Background())
	if st.Services[1].Status != ServiceError || !strings.Contains(st.Services[1].Detail, "exit status 3") {
		t.Errorf("dockerd service: %+v, want error with the exit status", st.Services[1])
	}
	if !strings.Contains(st.Detail, "dockerd exited (exit status 3)") {
		t.Errorf("detail %q does not mention the exit", st.Detail)
	}
}

func TestStartContainerdExitAborts(t *testing.T) {
	f := newFakes(t)
	f.set(Containerd, "exit")
	r, _ := fakeRuntime(t, f, func(c *Config) { c.ContainerdTimeout = time.Hour })
	res := r.Ensure(context.Background(), true)
	if res.Ready || !strings.Contains(res.Message, "containerd exited before its socket") || !strings.HasSuffix(res.Message, "fake containerd: giving up") {
		t.Fatalf("got %+v, want failed naming containerd and ending with its log", res)
	}
	if f.starts(Dockerd) != 0 {
		t.Fatal("dockerd started after containerd exited")
	}
}

// TestStartContainerdSlowIsANote: containerd's wait gives up (when the
// test says), and dockerd is started anyway.
func TestStartContainerdSlowIsANote(t *testing.T) {
	f := newFakes(t)
	f.set(Containerd, "hang")
	r, _ := fakeRuntime(t, f, func(c *Config) { c.ContainerdTimeout = 50 * time.Millisecond })
	close(controlTimer(r, Containerd, waitReady))
	res := r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusStarted || !strings.Contains(res.Message, "containerd socket not ready after 50ms") {
		t.Fatalf("got %+v, want started with a note on containerd", res)
	}
	st := r.Status(context.Background())
	if st.ContainerdReady || st.Services[0].Status != ServiceNotReady {
		t.Errorf("containerd: %+v, want not ready", st.Services[0])
	}
}

// TestStartDockerdTimeoutThenWaitsForTheSameProcess: dockerd's wait gives
// up once the fake has logged all its lines (the test decides when, so a
// slow start of the fake cannot cut its log short), and the message ends
// with them; the next Ensure waits for the same process.
func TestStartDockerdTimeoutThenWaitsForTheSameProcess(t *testing.T) {
	f := newFakes(t)
	f.set(Dockerd, "hang")
	r, cfg := fakeRuntime(t, f, func(c *Config) { c.DockerdTimeout = 50 * time.Millisecond })
	fire := controlTimer(r, Dockerd, waitReady)
	done := make(chan EnsureResult, 1)
	go func() { done <- r.Ensure(context.Background(), true) }()
	waitUntil(t, time.Minute, "the fake dockerd to log its lines", func() bool {
		pid, ok := f.pid(Dockerd, 0)
		return ok && f.recorded(Dockerd, pid)
	})
	close(fire)
	res := <-done
	if res.Ready || !strings.Contains(res.Message, "dockerd socket "+cfg.DockerSocket+" not ready after 50ms (pid ") ||
		!strings.HasSuffix(res.Message, "fake dockerd line 24") {
		t.Fatalf("got %+v, want failed naming dockerd and ending with its log", res)
	}
	res = r.Ensure(context.Background(), true)
	if res.Ready || !strings.Contains(res.Message, "waiting for bundled dockerd (pid=") {
		t.Fatalf("retry: got %+v, want it to wait for the running dockerd", res)
	}
	if n := f.starts(Dockerd); n != 1 {
		t.Fatalf("dockerd started %d times, want 1 (one that runs is not doubled)", n)
	}
}

func TestStartDockerAlreadyServed(t *testing.T) {
	f := newFakes(t)
	r, cfg := fakeRuntime(t, f, nil)
	fakeDockerOn(t, cfg.DockerSocket)
	res := r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusReused || res.Message != "docker socket already ready; docker socket ready" {
		t.Fatalf("got %+v, want reused (nothing was started) with the seed's message for a dockerd someone else started", res)
	}
	if len(f.commands) != 0 {
		t.Fatalf("started %v, want nothing", f.commands)
	}
}

// TestSupervisionRestartsOnlyWhatIsDown: dockerd killed under the runtime
// is in error at once, with its exit status and log; a probe does not start
// it; the next Ensure that asks starts dockerd alone.
func TestSupervisionRestartsOnlyWhatIsDown(t *testing.T) {
	f := newFakes(t)
	r, _ := fakeRuntime(t, f, nil)
	if res := r.Ensure(context.Background(), true); res.Status != StatusStarted {
		t.Fatalf("cold Ensure: %+v", res)
	}
	pid, _ := r.PID(Dockerd)
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The supervisor knows at once, before anyone asks for the status.
	waitUntil(t, time.Minute, "dockerd's ready gauge to drop", func() bool {
		return testutil.ToFloat64(r.ready.WithLabelValues(Dockerd)) == 0
	})
	assertReady(t, r, "after dockerd was killed", 1, 0)
	waitUntil(t, time.Minute, "dockerd's exit in Status", func() bool {
		return strings.HasPrefix(r.Status(context.Background()).Services[1].Detail, "exited: ")
	})
	assertReady(t, r, "after the status of a dead dockerd", 1, 0)
	st := r.Status(context.Background())
	if d := st.Services[1].Detail; !strings.Contains(d, "signal: killed") || !strings.Contains(d, "fake dockerd serving") {
		t.Errorf("dockerd detail %q: want the exit status and the log's tail", d)
	}
	if st.DockerReady || st.Services[0].Status != ServiceReady {
		t.Errorf("status %+v: want containerd ready, dockerd not", st)
	}
	if _, ok := r.PID(Dockerd); ok {
		t.Error("PID(dockerd) still answers for a dead process")
	}
	if got := testutil.ToFloat64(r.exitsTotal.WithLabelValues(Dockerd)); got != 1 {
		t.Errorf("daemon_exits_total{dockerd}: got %v, want 1", got)
	}
	if res := r.Ensure(context.Background(), false); res.Ready || res.Status != StatusFailed {
		t.Fatalf("probe after the exit: got %+v, want failed", res)
	}
	if f.starts(Dockerd) != 1 {
		t.Fatal("a probe started dockerd")
	}
	res := r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusStarted || strings.Contains(res.Message, "spawned bundled containerd") {
		t.Fatalf("Ensure after the exit: got %+v, want started, dockerd only", res)
	}
	if f.starts(Containerd) != 1 || f.starts(Dockerd) != 2 {
		t.Fatalf("starts: containerd %d, dockerd %d; want 1 and 2", f.starts(Containerd), f.starts(Dockerd))
	}
	assertReady(t, r, "after the restart", 1, 1)
	if st := r.Status(context.Background()); st.Services[1].Status != ServiceReady {
		t.Fatalf("dockerd after the restart: %+v", st.Services[1])
	}
}

// TestSupervisionRestartsContainerdUnderLiveDockerd: a dead containerd is
// started again even though dockerd still answers.
func TestSupervisionRestartsContainerdUnderLiveDockerd(t *testing.T) {
	f := newFakes(t)
	r, _ := fakeRuntime(t, f, nil)
	if res := r.Ensure(context.Background(), true); res.Status != StatusStarted {
		t.Fatalf("cold Ensure: %+v", res)
	}
	pid, _ := r.PID(Containerd)
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "containerd's exit in Status", func() bool {
		return strings.HasPrefix(r.Status(context.Background()).Services[0].Detail, "exited: ")
	})
	st := r.Status(context.Background())
	if st.Services[0].Status != ServiceError || !st.DockerReady || !strings.Contains(st.Detail, "containerd exited (signal: killed)") {
		t.Fatalf("status after containerd died: %+v", st)
	}
	res := r.Ensure(context.Background(), true)
	if !res.Ready || res.Status != StatusStarted || !strings.Contains(res.Message, "spawned bundled containerd") || strings.Contains(res.Message, "spawned bundled dockerd") {
		t.Fatalf("Ensure: %+v, want containerd alone started again", res)
	}
	if f.starts(Containerd) != 2 || f.starts(Dockerd) != 1 {
		t.Fatalf("starts: containerd %d, dockerd %d; want 2 and 1", f.starts(Containerd), f.starts(Dockerd))
	}
	if st := r.Status(context.Background()); !st.ContainerdReady || st.Services[0].Status != ServiceReady {
		t.Fatalf("containerd after the restart: %+v", st.Services[0])
	}
}

func TestStartSpawnFailureIsReported(t *testing.T) {
	f := newFakes(t)
	r, _ := fakeRuntime(t, f, func(c *Config) {
		c.StartProcess = func(cmd *exec.Cmd) error { return errors.New("exec format error") }
		c.DockerdTimeout = time.Hour
	})
	res := r.Ensure(context.Background(), true)
	if res.Ready || !strings.HasPrefix(res.Message, "failed to spawn bundled containerd: exec format error; docker socket missing") {
		t.Fatalf("got %+v, want the seed's spawn failure note first", res)
	}
}

// TestShutdownKillsWhatIgnoresSIGTERMAfterTheGrace: dockerd's grace ends
// (when the test says: at once) and it is killed; containerd, whose grace
// never ends, stops by itself on SIGTERM however slowly.
func TestShutdownKillsWhatIgnoresSIGTERMAfterTheGrace(t *testing.T) {
	f := newFakes(t)
	f.set(Dockerd, "ignore-term")
	r, _ := fakeRuntime(t, f, func(c *Config) { c.StopGrace = time.Hour })
	close(controlTimer(r, Dockerd, waitGrace))
	if res := r.Ensure(context.Background(), true); res.Status != StatusStarted {
		t.Fatalf("Ensure: %+v", res)
	}
	dpid, _ := r.PID(Dockerd)
	cpid, _ := r.PID(Containerd)
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !processGone(dpid) || !processGone(cpid) {
		t.Fatal("a daemon outlived Shutdown")
	}
	r.mu.Lock()
	state := r.children[Dockerd].exitStatus()
	r.mu.Unlock()
	if state != "signal: killed" {
		t.Errorf("dockerd ended with %q, want signal: killed", state)
	}
	if got := f.events(t); !slices.Equal(got, []string{"containerd"}) {
		t.Errorf("terminated: %v, want containerd only (dockerd ignored SIGTERM)", got)
	}
}

func TestShutdownDeadlineKillsAtOnce(t *testing.T) {
	f := newFakes(t)
	f.set(Dockerd, "ignore-term")
	r, _ := fakeRuntime(t, f, func(c *Config) { c.StopGrace = time.Hour })
	if res := r.Ensure(context.Background(), true); res.Status != StatusStarted {
		t.Fatalf("Ensure: %+v", res)
	}
	dpid, _ := r.PID(Dockerd)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := r.Shutdown(ctx)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Shutdown: %v, want an error saying dockerd was killed", err)
	}
	if !processGone(dpid) {
		t.Fatal("dockerd outlived Shutdown")
	}
	if res := r.Ensure(context.Background(), true); res.Ready || !strings.Contains(res.Message, "shut down") {
		t.Fatalf("Ensure after Shutdown: %+v, want failed, shut down", res)
	}
}

func TestShutdownAbandonsARunningStart(t *testing.T) {
	f := newFakes(t)
	f.set(Dockerd, "hang")
	r, _ := fakeRuntime(t, f, func(c *Config) { c.DockerdTimeout = time.Hour })
	done := make(chan EnsureResult, 1)
	go func() { done <- r.Ensure(context.Background(), true) }()
	waitUntil(t, time.Minute, "dockerd to be spawned", func() bool { return f.starts(Dockerd) == 1 })
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.Ready || !strings.Contains(res.Message, "abandoned") {
		t.Fatalf("Ensure during Shutdown: %+v, want failed, abandoned", res)
	}
	res = r.Ensure(context.Background(), true)
	if res.Ready || !strings.Contains(res.Message, "shut down") {
		t.Fatalf("Ensure after Shutdown: %+v, want failed, shut down", res)
	}
}

// ensureAtOnce calls Ensure from n goroutines at once and returns their
// answers.
func ensureAtOnce(r *Runtime, n int) []EnsureResult {
	var wg sync.WaitGroup
	results := make([]EnsureResult, n)
	for i := range results {
		wg.Go(func() { results[i] = r.Ensure(context.Background(), true) })
	}
	wg.Wait()
	return results
}

func TestEnsureConcurrentCallersOneSpawn(t *testing.T) {
	f := newFakes(t)
	r, _ := fakeRuntime(t, f, nil)
	count := map[string]int{}
	for _, res := range ensureAtOnce(r, 100) {
		count[res.Status]++
	}
	if count[StatusStarted] != 1 || count[StatusReused] != 99 {
		t.Fatalf("statuses %v, want 1 started, 99 reused", count)
	}
	if f.starts(Containerd) != 1 || f.starts(Dockerd) != 1 {
		t.Fatalf("starts: containerd %d, dockerd %d; want 1 each", f.starts(Containerd), f.starts(Dockerd))
	}
}

func TestDaemonLogUnavailableIsDiscarded(t *testing.T) {
	f := newFakes(t)
	r, cfg := fakeRuntime(t, f, nil)
	// A file where the log directory should be.
	if err := os.WriteFile(cfg.LogDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res := r.Ensure(context.Background(), true)
	if !res.Ready {
		t.Fatalf("Ensure with no log dir: %+v, want the daemons started anyway", res)
	}
	if _, err := r.OpenLog(context.Background(), Dockerd, LogOptions{}); err == nil {
		t.Fatal("OpenLog: got a log that cannot exist")
	}
}
