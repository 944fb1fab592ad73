package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/events"
	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"github.com/arcbox/arcbox-agent/sandbox/network"
	"github.com/prometheus/client_golang/prometheus"
)

// ociEnv is a real sandbox.Manager (OCI backend) in a temporary state dir, for the
// privileged tests. Its cleanup removes every sandbox the test made and
// then checks that nothing of them is left on the machine.
type ociEnv struct {
	t       testing.TB
	m       *sandbox.Manager
	cfg     Config
	runtime string // the runtime binary's path
	shared  string // the mount root: what sandboxes may mount is under it
	events  *events.Subscription
	mu      sync.Mutex
	ids     map[string]bool
}

// requirePrivileged gates a test that makes real sandboxes.
func requirePrivileged(t testing.TB, runtime string) string {
	t.Helper()
	testenv.RequireIsolated(t)
	rt := testenv.RequireBinary(t, runtime)
	testenv.RequireBinary(t, "busybox")
	if testSetupErr != nil {
		t.Fatalf("privileged test setup: %v", testSetupErr)
	}
	return rt
}

func newOCIEnv(t testing.TB, runtime string, tweak ...func(*Config)) *ociEnv {
	t.Helper()
	rt := requirePrivileged(t, runtime)
	shared := t.TempDir()
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		MountRoots:    []string{shared},
		StateDir:      searchableTempDir(t),
		Runtime:       runtime,
		DefaultRootfs: testRootfs,
		InitPath:      testInitPath,
		CgroupParent:  testCgroupParent,
		Logger:        testLogger(),
	}
	for _, f := range tweak {
		f(&cfg)
	}
	e := &ociEnv{t: t, cfg: cfg, runtime: rt, shared: shared, ids: map[string]bool{}}
	e.open()
	t.Cleanup(e.cleanup)
	return e
}

// rootfsDir is where a test's root filesystem name goes: the agent's
// store, the only place a create's rootfs may name.
func (e *ociEnv) rootfsDir(name string) string {
	return storeRootfsDir(e.t, e.cfg.StateDir, name)
}

func storeRootfsDir(t testing.TB, stateDir, name string) string {
	t.Helper()
	store := filepath.Join(stateDir, "rootfs")
	if err := os.MkdirAll(store, 0o700); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(store, name)
}

// sharedDir makes a directory under the mount root, readable by all.
func (e *ociEnv) sharedDir(name string) string {
	e.t.Helper()
	dir := filepath.Join(e.shared, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	return dir
}

// searchableTempDir is a t.TempDir that every user may pass through (not
// list), as the state dir of sandboxes with a user namespace must be.
func searchableTempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// testLogger logs to stderr with ARCBOX_TEST_LOG=1, else nowhere.
func testLogger() *slog.Logger {
	if os.Getenv("ARCBOX_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// open starts a manager on the env's state dir.
func (e *ociEnv) open() {
	e.t.Helper()
	ctx := context.Background()
	backend, err := New(ctx, e.cfg)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	m, err := sandbox.NewManager(ctx, sandbox.Config{
		StateDir: e.cfg.StateDir,
		// The test's, not the machine's: an agent of this test only.
		IDRangeDir: filepath.Join(filepath.Dir(e.cfg.StateDir), "idranges"),
		BridgeCIDR: e.cfg.BridgeCIDR,
		Logger:     e.cfg.Logger,
		Registerer: prometheus.NewRegistry(),
	}, backend)
	if err != nil {
		e.t.Fatalf("NewManager: %v", err)
	}
	e.m = m
	if e.events, err = m.Events().Subscribe(events.Live(), events.Filter{}); err != nil {
		e.t.Fatalf("Subscribe: %v", err)
	}
}

// restart closes the manager and opens another on the same state dir, as
// an agent restart does; between the two, between runs f.
func (e *ociEnv) restart(between func()) {
	e.t.Helper()
	if err := e.m.Close(context.Background()); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	if between != nil {
		between()
	}
	e.open()
}

func (e *ociEnv) cleanup() {
	t := e.t
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, info := range e.m.List(sandbox.Filter{}) {
		if err := e.m.Remove(ctx, info.ID, true); err != nil {
			t.Errorf("cleanup: Remove %s: %v", info.ID, err)
		}
	}
	// Snapshots may be read-only (immutable files), which the temporary
	// directory's own cleanup cannot remove.
	for _, s := range e.m.Snapshots(sandbox.SnapshotFilter{}) {
		if err := e.m.DeleteSnapshot(ctx, s.ID); err != nil {
			t.Errorf("cleanup: DeleteSnapshot %s: %v", s.ID, err)
		}
	}
	if err := e.m.Close(ctx); err != nil {
		t.Errorf("cleanup: Close: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for id := range e.ids {
		checkNothingLeft(t, e.cfg, e.runtime, id)
	}
	checkNoMounts(t, e.cfg.StateDir)
}

// track notes a sandbox id for the leak check.
func (e *ociEnv) track(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ids[id] = true
}

// create makes a sandbox and waits for it to be ready.
func (e *ociEnv) create(s sandbox.Spec) sandbox.Info {
	e.t.Helper()
	info, created, err := e.m.Create(context.Background(), s)
	if err != nil {
		e.t.Fatalf("Create: %v", err)
	}
	if !created {
		e.t.Fatalf("Create: not created")
	}
	e.track(info.ID)
	e.expect(info.ID, sandbox.ActionReady)
	return info
}

// next is the next event of the environment's subscription.
func (e *ociEnv) next(ctx context.Context) (events.Event, error) {
	ev, _, err := e.events.Next(ctx)
	return ev, err
}

// expect reads events until it has seen the actions about id, in order.
func (e *ociEnv) expect(id string, actions ...string) []events.Event {
	e.t.Helper()
	var got []events.Event
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // bounds a hang only
	defer cancel()
	for len(actions) > 0 {
		ev, err := e.next(ctx)
		if err != nil {
			e.t.Fatalf("sandbox %s: waiting for %v: %v", id, actions, err)
		}
		if ev.SandboxID != id {
			continue
		}
		if ev.Action == sandbox.ActionFailed && actions[0] != sandbox.ActionFailed {
			e.t.Fatalf("sandbox %s failed: %s", id, ev.Attributes["error"])
		}
		if ev.Action == actions[0] {
			got = append(got, ev)
			actions = actions[1:]
		}
	}
	return got
}

// waitState waits until the sandbox is in state st.
func (e *ociEnv) waitState(id string, st sandbox.State) {
	e.t.Helper()
	sandboxtest.WaitFor(e.t, "sandbox "+id+" "+string(st), func() bool {
		info, err := e.m.Get(id)
		return err == nil && info.State == st
	})
}

// run runs a command and returns its stdout, stderr and exit code.
func (e *ociEnv) run(id string, p sandbox.Process) (stdout, stderr string, code int) {
	e.t.Helper()
	var c liveOut
	code, err := e.m.Run(context.Background(), id, p, c.out)
	if err != nil {
		e.t.Fatalf("Run %q: %v", p.Cmd, err)
	}
	return c.String(), c.Stderr(), code
}

// sh runs a shell command, failing the test unless it exits 0.
func (e *ociEnv) sh(id, script string) string {
	e.t.Helper()
	out, errOut, code := e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", script}})
	if code != 0 {
		e.t.Fatalf("sh -c %q: exit %d, stderr %q", script, code, errOut)
	}
	return out
}

// checkNothingLeft fails the test if anything of sandbox id remains: its
// bundle directory, runtime state, cgroup, or a process in its cgroup.
func checkNothingLeft(t testing.TB, cfg Config, runtime, id string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "sandboxes", id)); !os.IsNotExist(err) {
		t.Errorf("sandbox %s: bundle dir left (%v)", id, err)
	}
	rtRoot := filepath.Join(cfg.StateDir, "runtime")
	out, err := exec.Command(runtime, "--root", rtRoot, "list", "--format=json").CombinedOutput()
	if err != nil {
		t.Errorf("%s list: %v: %s", runtime, err, out)
	} else if bytes.Contains(out, []byte(`"`+id+`"`)) {
		t.Errorf("sandbox %s: still in %s list: %s", id, runtime, out)
	}
	for _, name := range []string{"runc", "crun"} {
		// The default roots too: nothing may have gone there.
		if out, err := exec.Command(name, "list", "--format=json").CombinedOutput(); err == nil && bytes.Contains(out, []byte(`"`+id+`"`)) {
			t.Errorf("sandbox %s: in the default %s list: %s", id, name, out)
		}
	}
	if _, err := os.Lstat(filepath.Join(cfg.StateDir, "netns", id)); !os.IsNotExist(err) {
		t.Errorf("sandbox %s: network namespace file left (%v)", id, err)
	}
	if _, err := net.InterfaceByName(network.HostIfName(id)); err == nil {
		t.Errorf("sandbox %s: veth %s left", id, network.HostIfName(id))
	}
	rel := filepath.Join(cfg.CgroupParent, id)
	for _, d := range cgroupDirs(rel) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("sandbox %s: cgroup %s left", id, d)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err == nil && bytes.Contains(data, []byte("/"+rel+"\n")) {
			t.Errorf("sandbox %s: process %s still in its cgroup", id, filepath.Dir(p))
		}
	}
}

// checkNoMounts fails the test if anything is mounted under dir.
func checkNoMounts(t testing.TB, dir string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, dir) {
			t.Errorf("mount left: %s", line)
		}
	}
}

// runtimeState is `<runtime> state` of a sandbox.
func (e *ociEnv) runtimeState(id string) (pid int, status string) {
	e.t.Helper()
	out, err := exec.Command(e.runtime, "--root", filepath.Join(e.cfg.StateDir, "runtime"), "state", id).Output()
	if err != nil {
		e.t.Fatalf("%s state %s: %v", e.runtime, id, err)
	}
	var st struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		e.t.Fatalf("%s state: %v: %s", e.runtime, err, out)
	}
	return st.Pid, st.Status
}

func (e *ociEnv) String() string { return fmt.Sprintf("ociEnv(%s)", e.cfg.StateDir) }
