package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/events"
	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"
)

// harness is a Manager over the fake backend and clock.
type harness struct {
	t       *testing.T
	m       *Manager
	backend *fakeBackend
	clock   *fakeClock
	reg     *prometheus.Registry
	dir     string
	events  *events.Subscription
}

func newHarness(t *testing.T, tweak ...func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, backend: newFakeBackend(), clock: newFakeClock(), dir: t.TempDir()}
	h.start(tweak...)
	return h
}

// start (re)builds the manager on h.dir.
func (h *harness) start(tweak ...func(*Config)) {
	h.t.Helper()
	h.reg = prometheus.NewRegistry()
	// The fake's bridge: 10.9.0.1, and addresses from 10.9.0.2.
	cfg := Config{StateDir: h.dir, Registerer: h.reg, Now: h.clock.Now, BridgeCIDR: netip.MustParsePrefix("10.9.0.0/24"),
		IDRangeDir: filepath.Join(filepath.Dir(h.dir), "idranges")}
	for _, f := range tweak {
		f(&cfg)
	}
	m, err := newManager(context.Background(), cfg, h.backend, h.clock.AfterFunc)
	if err != nil {
		h.t.Fatalf("newManager: %v", err)
	}
	h.m = m
	sub, err := m.Events().Subscribe(events.Live(), events.Filter{})
	if err != nil {
		h.t.Fatalf("Subscribe: %v", err)
	}
	h.events = sub
	h.t.Cleanup(func() { m.Close(context.Background()) })
}

// expect reads events until it has seen each of the actions about id, in
// order; other events are skipped. It returns the events it matched.
func (h *harness) expect(id string, actions ...string) []events.Event {
	h.t.Helper()
	var got []events.Event
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	defer cancel()
	for len(actions) > 0 {
		e, _, err := h.events.Next(ctx)
		if err != nil {
			h.t.Fatalf("sandbox %s: waiting for events %v: %v", id, actions, err)
		}
		if e.SandboxID == id && e.Action == actions[0] {
			got = append(got, e)
			actions = actions[1:]
		}
	}
	return got
}

func (h *harness) create(s Spec) Info {
	h.t.Helper()
	info, created, err := h.m.Create(context.Background(), s)
	if err != nil {
		h.t.Fatalf("Create(%+v): %v", s, err)
	}
	if !created {
		h.t.Fatalf("Create(%+v): created = false", s)
	}
	return info
}

func (h *harness) createReady(s Spec) Info {
	h.t.Helper()
	info := h.create(s)
	h.expect(info.ID, ActionCreated, ActionReady)
	return info
}

func (h *harness) state(id string) State {
	h.t.Helper()
	info, err := h.m.Get(id)
	if err != nil {
		h.t.Fatalf("Get(%s): %v", id, err)
	}
	return info.State
}

// collect is an out callback that keeps the output by stream.
type collect struct {
	stdout, stderr bytes.Buffer
}

func (c *collect) out(o Output) error {
	if o.Stream == StreamStdout {
		c.stdout.Write(o.Data)
	} else {
		c.stderr.Write(o.Data)
	}
	return nil
}

func TestCreateReadyAndInfo(t *testing.T) {
	h := newHarness(t)
	info := h.create(Spec{ID: "box1", Labels: map[string]string{"a": "1"}})
	if info.State != StateStarting {
		t.Errorf("Create state = %s, want starting", info.State)
	}
	evs := h.expect("box1", ActionCreated, ActionReady)
	if !evs[0].Time.Equal(h.clock.Now()) {
		t.Errorf("event time = %v, want the injected clock's %v", evs[0].Time, h.clock.Now())
	}
	got, err := h.m.Get("box1")
	if err != nil {
		t.Fatal(err)
	}
	want := Info{ID: "box1", State: StateReady, Labels: map[string]string{"a": "1"},
		Limits: Limits{VCPUs: 1, MemoryMiB: 512, Pids: 1024}, NetworkMode: "none",
		CreatedAt: h.clock.Now(), ReadyAt: h.clock.Now()}
	if got.ID != want.ID || got.State != want.State || got.Labels["a"] != "1" || got.Limits != want.Limits ||
		got.NetworkMode != want.NetworkMode || !got.CreatedAt.Equal(want.CreatedAt) || !got.ReadyAt.Equal(want.ReadyAt) ||
		got.LastExitCode != nil || !got.LastExitedAt.IsZero() || got.Error != "" {
		t.Errorf("Get = %+v, want %+v", got, want)
	}
	if sec := got.Security; !sec.UserNamespace || sec.IDMap.HostID < idPoolStart || sec.IDMap.Size != IDRangeSize ||
		!sec.NoNewPrivileges || !sec.Seccomp || len(sec.Capabilities) == 0 {
		t.Errorf("Security = %+v", sec)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "sandboxes", "box1", recordFile)); err != nil {
		t.Errorf("record: %v", err)
	}
}

// TestIDRangeClaims: a range another agent on the machine claims is
// passed by; a claim naming a state dir that is gone is taken over; a
// removal releases the claim.
func TestIDRangeClaims(t *testing.T) {
	h := newHarness(t)
	claims := h.m.cfg.IDRangeDir
	if err := os.MkdirAll(claims, 0o755); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir() // another agent's state dir, alive
	free := uint32(idPoolStart + 7*IDRangeSize)
	stale := uint32(idPoolStart + 9*IDRangeSize)
	for slot := range uint32(idSlots) {
		host := uint32(idPoolStart) + slot*IDRangeSize
		owner := other
		switch host {
		case free:
			continue
		case stale:
			owner = filepath.Join(other, "gone")
		}
		if err := os.WriteFile(filepath.Join(claims, strconv.FormatUint(uint64(host), 10)), []byte(owner), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := map[uint32]bool{}
	for _, id := range []string{"a", "b"} {
		got[h.createReady(Spec{ID: id}).Security.IDMap.HostID] = true
	}
	if !got[free] || !got[stale] {
		t.Fatalf("ranges %v, want %d and %d, the only ones no live agent claims", got, free, stale)
	}
	if _, _, err := h.m.Create(context.Background(), Spec{ID: "c"}); !errors.Is(err, ErrBusy) {
		t.Errorf("with every range claimed: %v", err)
	}
	a, _ := h.m.Get("a")
	if err := h.m.Remove(context.Background(), "a", true); err != nil {
		t.Fatal(err)
	}
	for host := range got {
		data, err := os.ReadFile(filepath.Join(claims, strconv.FormatUint(uint64(host), 10)))
		if host != a.Security.IDMap.HostID {
			if string(data) != h.m.cfg.StateDir {
				t.Errorf("b's claim: %q %v", data, err)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a's claim after its removal: %q %v", data, err)
		}
	}
	// A claim of this agent's that no record holds (it died between the
	// two) is released at the next start; others' claims are not.
	mine := filepath.Join(claims, strconv.FormatUint(uint64(a.Security.IDMap.HostID), 10))
	if err := os.WriteFile(mine, []byte(h.m.cfg.StateDir), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.start()
	if _, err := os.Stat(mine); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a claim no record holds survived a restart: %v", err)
	}
	if n, _ := os.ReadDir(claims); len(n) != idSlots-1 {
		t.Errorf("%d claims after the restart, want %d", len(n), idSlots-1)
	}
}

// TestIDRangeClaimsRace: two agents sharing the claims directory and
// contending for the same few ranges, stale ones among them, never hand
// out one range twice.
func TestIDRangeClaimsRace(t *testing.T) {
	a, b := newHarness(t), newHarness(t) // one claims directory: the test's
	claims := a.m.cfg.IDRangeDir
	if claims != b.m.cfg.IDRangeDir {
		t.Fatalf("two claims directories: %s %s", claims, b.m.cfg.IDRangeDir)
	}
	other := t.TempDir()
	for slot := range uint32(idSlots) {
		owner := other
		switch slot % 4096 {
		case 5: // four free ranges
			continue
		case 9: // four stale ones
			owner = filepath.Join(other, "gone")
		}
		host := uint32(idPoolStart) + slot*IDRangeSize
		if err := os.WriteFile(filepath.Join(claims, strconv.FormatUint(uint64(host), 10)), []byte(owner), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	got := map[uint32]string{}
	var wg sync.WaitGroup
	for _, h := range []*harness{a, b} {
		for i := range 4 {
			wg.Go(func() {
				id := fmt.Sprintf("r%d", i)
				info, _, err := h.m.Create(context.Background(), Spec{ID: id})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if prev, ok := got[info.Security.IDMap.HostID]; ok {
					t.Errorf("range %d handed out twice: %s and %s of %s", info.Security.IDMap.HostID, prev, id, h.dir)
				}
				got[info.Security.IDMap.HostID] = id + " of " + h.dir
			})
		}
	}
	wg.Wait()
	if len(got) != 8 {
		t.Errorf("%d ranges handed out, want 8", len(got))
	}
}

// TestNextIDMapHint: each start tells the backend the range the next
// sandbox gets, as long as nothing comes between: one no sandbox holds,
// and a host-users sandbox takes none.
func TestNextIDMapHint(t *testing.T) {
	h := newHarness(t)
	hint := func(id string) IDMap {
		h.backend.mu.Lock()
		defer h.backend.mu.Unlock()
		return h.backend.nextIDMaps[id]
	}
	a := h.createReady(Spec{ID: "a"})
	if next := hint("a"); next.Size != IDRangeSize || next == a.Security.IDMap {
		t.Fatalf("a (range %+v) was told the next is %+v", a.Security.IDMap, next)
	}
	hu := h.createReady(Spec{ID: "hu", Security: Security{HostUsers: true}})
	b := h.createReady(Spec{ID: "b"})
	if hint("a") != b.Security.IDMap || hint("hu") != b.Security.IDMap {
		t.Errorf("a and %s were told %+v and %+v; b got %+v", hu.ID, hint("a"), hint("hu"), b.Security.IDMap)
	}
	if err := h.m.Remove(context.Background(), "a", true); err != nil {
		t.Fatal(err)
	}
	c := h.createReady(Spec{ID: "c"})
	if hint("b") != c.Security.IDMap {
		t.Errorf("b was told %+v; c got %+v", hint("b"), c.Security.IDMap)
	}
	if next := hint("c"); next == b.Security.IDMap || next == c.Security.IDMap || next.Size != IDRangeSize {
		t.Errorf("c was told %+v, a range b or c holds", next)
	}
}

// TestIDMapRanges: each sandbox gets a range no other holds, kept across
// a restart and given to the backend; a host-users sandbox gets none.
func TestIDMapRanges(t *testing.T) {
	h := newHarness(t)
	seen := map[uint32]string{}
	for _, id := range []string{"a", "b", "c"} {
		info := h.createReady(Spec{ID: id})
		host := info.Security.IDMap.HostID
		if other, ok := seen[host]; ok {
			t.Fatalf("%s and %s share the range at %d", id, other, host)
		}
		seen[host] = id
		h.backend.mu.Lock()
		given := h.backend.idmaps[id]
		h.backend.mu.Unlock()
		if given != info.Security.IDMap {
			t.Errorf("%s: backend got %+v, Info says %+v", id, given, info.Security.IDMap)
		}
	}
	hu := h.createReady(Spec{ID: "hu", Security: Security{HostUsers: true}})
	h.backend.mu.Lock()
	given := h.backend.idmaps["hu"]
	h.backend.mu.Unlock()
	if hu.Security.UserNamespace || given != (IDMap{}) {
		t.Errorf("host users: %+v, backend got %+v", hu.Security, given)
	}
	before, _ := h.m.Get("b")
	if err := h.m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.start()
	after, err := h.m.Get("b")
	if err != nil {
		t.Fatal(err)
	}
	if after.Security.IDMap != before.Security.IDMap {
		t.Errorf("range across a restart: %+v, was %+v", after.Security.IDMap, before.Security.IDMap)
	}
	for i := range 5 {
		info := h.createReady(Spec{ID: fmt.Sprintf("n%d", i)})
		if other, ok := seen[info.Security.IDMap.HostID]; ok {
			t.Errorf("after a restart n%d got %s's range", i, other)
		}
	}
}

func TestCreateIdempotentAndGeneratedID(t *testing.T) {
	h := newHarness(t)
	spec := Spec{ID: "same", Labels: map[string]string{"k": "v"}, Limits: Limits{VCPUs: 1}}
	h.createReady(spec)
	// The same request (defaults spelled out, empty maps) is the same sandbox.
	again := Spec{ID: "same", Labels: map[string]string{"k": "v"}, Limits: Limits{VCPUs: 1, MemoryMiB: 512}, Env: map[string]string{}, NetworkMode: "none"}
	info, created, err := h.m.Create(context.Background(), again)
	if err != nil || created || info.ID != "same" || info.State != StateReady {
		t.Fatalf("Create again = %+v, %v, %v; want the existing sandbox, false, nil", info, created, err)
	}
	_, _, err = h.m.Create(context.Background(), Spec{ID: "same", Labels: map[string]string{"k": "other"}})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("Create with another spec: err = %v, want ErrConflict", err)
	}
	a := h.create(Spec{})
	b := h.create(Spec{})
	if a.ID == b.ID || ValidateID(a.ID) != nil || ValidateID(b.ID) != nil {
		t.Fatalf("generated ids %q and %q: want distinct and valid", a.ID, b.ID)
	}
}

func TestInvalidInput(t *testing.T) {
	h := newHarness(t)
	cases := []struct {
		name  string
		spec  Spec
		field string
	}{
		{"bad id", Spec{ID: "-x"}, `"id"`},
		{"long id", Spec{ID: strings.Repeat("a", 65)}, `"id"`},
		{"kernel", Spec{Kernel: "/vmlinux"}, `"kernel"`},
		{"network unknown", Spec{NetworkMode: "host"}, `"network.mode"`},
		{"relative target", Spec{Mounts: []Mount{{Source: "/tmp", Target: "data"}}}, `"mounts[0].target"`},
		{"dotdot target", Spec{Mounts: []Mount{{Source: "/tmp", Target: "/a/../etc"}}}, `"mounts[0].target"`},
		{"relative source", Spec{Mounts: []Mount{{Source: "/tmp", Target: "/a"}, {Source: "tmp", Target: "/b"}}}, `"mounts[1].source"`},
		{"negative vcpus", Spec{Limits: Limits{VCPUs: -1}}, `"limits.vcpus"`},
		{"tiny memory", Spec{Limits: Limits{MemoryMiB: 1}}, `"limits.memory_mib"`},
		{"env name", Spec{Env: map[string]string{"A=B": "c"}}, `"env"`},
		{"working dir", Spec{WorkingDir: "rel"}, `"working_dir"`},
		{"user", Spec{User: "a b"}, `"user"`},
		{"ttl", Spec{TTL: -time.Second}, `"ttl_seconds"`},
		{"empty cmd", Spec{Cmd: []string{""}}, `"cmd"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := h.m.Create(context.Background(), c.spec)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "field "+c.field) {
				t.Errorf("Create: err = %v, want ErrInvalid naming field %s", err, c.field)
			}
		})
	}
	if len(h.m.List(Filter{})) != 0 {
		t.Errorf("invalid creates left sandboxes: %+v", h.m.List(Filter{}))
	}
	if _, err := h.m.Get("nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get unknown: %v, want ErrNotFound", err)
	}
	if _, err := h.m.Run(context.Background(), "nosuch", Process{Cmd: []string{"echo"}}, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Run unknown: %v, want ErrNotFound", err)
	}
	if _, err := h.m.Stop(context.Background(), "nosuch", 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stop unknown: %v, want ErrNotFound", err)
	}
	if err := h.m.Remove(context.Background(), "nosuch", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove unknown: %v, want ErrNotFound", err)
	}
	h.createReady(Spec{ID: "ok"})
	for _, p := range []Process{{}, {Cmd: []string{"x"}, WorkingDir: "rel"}, {Cmd: []string{"x"}, Timeout: -1}} {
		if _, err := h.m.Run(context.Background(), "ok", p, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("Run(%+v): %v, want ErrInvalid", p, err)
		}
	}
}

func TestStateMachine(t *testing.T) {
	valid := map[[2]State]bool{}
	for from, tos := range transitions {
		for _, to := range tos {
			valid[[2]State{from, to}] = true
		}
	}
	for _, from := range States {
		for _, to := range States {
			err := checkTransition(from, to)
			if valid[[2]State{from, to}] != (err == nil) {
				t.Errorf("checkTransition(%s, %s) = %v", from, to, err)
			}
			if err != nil && !errors.Is(err, ErrConflict) {
				t.Errorf("checkTransition(%s, %s) = %v, want ErrConflict", from, to, err)
			}
		}
	}
	for _, bad := range [][2]State{{StateStopped, StateReady}, {StateFailed, StateReady}, {StateStarting, StateRunning}, {StateReady, StateStopped}} {
		if checkTransition(bad[0], bad[1]) == nil {
			t.Errorf("%s -> %s allowed", bad[0], bad[1])
		}
	}
}

func TestRunOutputAndStates(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "r"})
	var c collect
	code, err := h.m.Run(context.Background(), "r", Process{Cmd: []string{"echo", "hi"}}, c.out)
	if err != nil || code != 0 || c.stdout.String() != "[hi]\n" {
		t.Fatalf("Run echo = %d, %v, stdout %q; want 0, nil, [hi]", code, err, c.stdout.String())
	}
	evs := h.expect("r", ActionRunning, ActionIdle)
	if evs[1].Attributes["exit_code"] != "0" {
		t.Errorf("idle attributes = %v, want exit_code 0", evs[1].Attributes)
	}
	c = collect{}
	code, err = h.m.Run(context.Background(), "r", Process{Cmd: []string{"fail", "3", "oops"}}, c.out)
	if err != nil || code != 3 || c.stderr.String() != "oops" || c.stdout.Len() != 0 {
		t.Fatalf("Run fail = %d, %v, stderr %q; want 3, nil, oops", code, err, c.stderr.String())
	}
	info, _ := h.m.Get("r")
	if info.State != StateReady || info.LastExitCode == nil || *info.LastExitCode != 3 || !info.LastExitedAt.Equal(h.clock.Now()) {
		t.Errorf("after run: %+v, want ready, last exit 3", info)
	}
	// A process that cannot start: an error, and the sandbox is ready again.
	if _, err := h.m.Run(context.Background(), "r", Process{Cmd: []string{"nope"}}, c.out); err == nil {
		t.Error("Run nope: no error")
	}
	if st := h.state("r"); st != StateReady {
		t.Errorf("after a failed start: %s, want ready", st)
	}
}

// TestRunOutputOfAnExitedProcessIsNeverDropped: a process writes and exits
// while its output is held up; everything it wrote is delivered, however
// late the pump reads it. (The pumps used to get 250 ms after the exit;
// one scheduled later than that on a loaded machine dropped what was still
// in the pipe. The stress test in e2e/sandbox runs the real thing.)
func TestRunOutputOfAnExitedProcessIsNeverDropped(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "late"})
	const n = 48 << 10 // fits in a pipe: the process exits at once
	gate := make(chan struct{})
	h.backend.burstGate = gate
	var c collect
	var first atomic.Bool
	out := func(o Output) error {
		if o.Truncated != "" {
			t.Errorf("stream %s reported cut: %s", o.Stream, o.Truncated)
		}
		if first.CompareAndSwap(false, true) {
			// The first byte of stdout: let the process write the rest
			// and exit while this pump is held up, as a pump scheduled
			// late on a busy machine is.
			close(gate)
			time.Sleep(4 * holderIdle)
		}
		return c.out(o)
	}
	code, err := h.m.Run(context.Background(), "late", Process{Cmd: []string{"burst", "49152"}}, out)
	if err != nil || code != 0 {
		t.Fatalf("Run burst = %d, %v", code, err)
	}
	if !bytes.Equal(c.stdout.Bytes(), floodPattern(n)) || !bytes.Equal(c.stderr.Bytes(), floodPattern(n)) {
		t.Fatalf("got %d bytes of stdout and %d of stderr, want %d of each, intact", c.stdout.Len(), c.stderr.Len(), n)
	}
}

// TestRunOutputHeldOpenIsCutAndSaysSo: a process that leaves its stdout
// open behind it to a background child that keeps writing gets all it
// wrote delivered, then the stream is cut and its last Output says why.
func TestRunOutputHeldOpenIsCutAndSaysSo(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "held"})
	var outs []Output
	out := func(o Output) error {
		o.Data = bytes.Clone(o.Data)
		outs = append(outs, o)
		return nil
	}
	code, err := h.m.Run(context.Background(), "held", Process{Cmd: []string{"holder"}}, out)
	if err != nil || code != 0 {
		t.Fatalf("Run holder = %d, %v", code, err)
	}
	var stdout string
	var cut []string
	for _, o := range outs {
		if o.Truncated != "" {
			cut = append(cut, o.Stream)
			continue
		}
		if len(cut) > 0 {
			t.Errorf("output after the cut notice: %+v", o)
		}
		if o.Stream == StreamStdout {
			stdout += string(o.Data)
		}
	}
	if !strings.HasPrefix(stdout, "x") || strings.Trim(stdout[1:], "y") != "" || !slices.Equal(cut, []string{StreamStdout}) {
		t.Fatalf("stdout %q, cut streams %v; want x and the holder's ys, [stdout]", stdout, cut)
	}

	// One that holds the stream without writing loses nothing: no cut.
	outs = nil
	code, err = h.m.Run(context.Background(), "held", Process{Cmd: []string{"silent"}}, out)
	if err != nil || code != 0 || len(outs) != 1 || string(outs[0].Data) != "x" || outs[0].Truncated != "" {
		t.Fatalf("Run silent = %d, %v, output %+v; want 0, x alone", code, err, outs)
	}
}

func TestRunRemoveNeedsForce(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "c"})
	done := make(chan int)
	go func() {
		code, _ := h.m.Run(context.Background(), "c", Process{Cmd: []string{"block"}}, nil)
		done <- code
	}()
	h.expect("c", ActionRunning)
	if err := h.m.Remove(context.Background(), "c", false); !errors.Is(err, ErrConflict) {
		t.Fatalf("Remove running without force: %v, want ErrConflict", err)
	}
	if err := h.backend.process(t, 0).Signal(unix.SIGTERM, false); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 143 {
		t.Errorf("exit code %d, want 143", code)
	}
}

// TestRunOrderAndBackPressure pushes 8 MiB through a slow, checking
// consumer: every byte arrives, in order, and out is never called twice at
// once.
func TestRunOrderAndBackPressure(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "f"})
	const n = 8 << 20
	var got bytes.Buffer
	var inside, calls atomic.Int32
	out := func(o Output) error {
		if inside.Add(1) != 1 {
			t.Error("out called concurrently")
		}
		defer inside.Add(-1)
		if calls.Add(1)%64 == 0 {
			time.Sleep(time.Millisecond) // a slow client: back-pressure
		}
		got.Write(o.Data)
		return nil
	}
	code, err := h.m.Run(context.Background(), "f", Process{Cmd: []string{"flood", "8388608"}}, out)
	if err != nil || code != 0 {
		t.Fatalf("Run flood = %d, %v", code, err)
	}
	if !bytes.Equal(got.Bytes(), floodPattern(n)) {
		t.Fatalf("got %d bytes, not the %d written in order", got.Len(), n)
	}
}

// TestRunClientGoneAndOutError: a client that goes away, or whose output
// fails, hangs the process up: SIGHUP, and its exit code stands.
func TestRunClientGoneAndOutError(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "g"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	var code int
	go func() {
		var err error
		code, err = h.m.Run(ctx, "g", Process{Cmd: []string{"block"}}, nil)
		done <- err
	}()
	h.expect("g", ActionRunning)
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || code != 128+int(unix.SIGHUP) {
		t.Fatalf("Run after cancel = %d, %v; want 129, context.Canceled", code, err)
	}
	if sigs := h.backend.process(t, 0).signals(); !slices.Equal(sigs, []unix.Signal{unix.SIGHUP}) {
		t.Errorf("signals %v, want SIGHUP alone", sigs)
	}
	evs := h.expect("g", ActionIdle)
	if evs[0].Attributes["exit_code"] != "129" {
		t.Errorf("idle = %v, want exit_code 129", evs[0].Attributes)
	}
	if st := h.state("g"); st != StateReady {
		t.Errorf("state %s, want ready", st)
	}
	// out failing (a broken connection) hangs it up too; its output goes
	// on into the run's buffer meanwhile, so it is not held up.
	boom := errors.New("broken pipe")
	code, err = h.m.Run(context.Background(), "g", Process{Cmd: []string{"flood", "10000000"}}, func(Output) error { return boom })
	if !errors.Is(err, boom) || code != 129 {
		t.Fatalf("Run with failing out = %d, %v; want 129, %v", code, err, boom)
	}
}

// TestHangupThenKill: a process that ignores SIGHUP is killed once the
// hang-up grace has passed.
func TestHangupThenKill(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.HangupGrace = 5 * time.Second })
	h.createReady(Spec{ID: "h"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		code, _ := h.m.Run(ctx, "h", Process{Cmd: []string{"stubborn"}}, nil)
		done <- code
	}()
	h.expect("h", ActionRunning)
	e := h.backend.process(t, 0)
	cancel()
	sandboxtest.WaitFor(t, "SIGHUP", func() bool { return len(e.signals()) > 0 })
	sandboxtest.WaitFor(t, "the grace timer", func() bool { return h.clock.pending() > 0 })
	h.clock.Advance(5 * time.Second)
	if code := <-done; code != ExitKilled {
		t.Errorf("exit %d, want 137", code)
	}
	if sigs := e.signals(); !slices.Equal(sigs, []unix.Signal{unix.SIGHUP, unix.SIGKILL}) {
		t.Errorf("signals %v, want SIGHUP then SIGKILL", sigs)
	}
}

func TestRunTimeout(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "t"})
	done := make(chan error)
	var code int
	go func() {
		var err error
		code, err = h.m.Run(context.Background(), "t", Process{Cmd: []string{"block"}, Timeout: 5 * time.Second}, nil)
		done <- err
	}()
	h.expect("t", ActionRunning)
	sandboxtest.WaitFor(t, "the timeout timer", func() bool { return h.clock.pending() > 0 })
	h.clock.Advance(5 * time.Second)
	if err := <-done; err != nil || code != ExitKilled {
		t.Fatalf("Run past timeout = %d, %v; want 137, nil", code, err)
	}
	sigs := h.backend.process(t, 0).signals()
	if len(sigs) == 0 || sigs[0] != unix.SIGKILL {
		t.Errorf("signals %v, want SIGKILL", sigs)
	}
}

func TestStopTermThenKill(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "s"})
	runDone := make(chan int)
	go func() {
		code, _ := h.m.Run(context.Background(), "s", Process{Cmd: []string{"stubborn"}}, nil)
		runDone <- code
	}()
	h.expect("s", ActionRunning)
	stopDone := make(chan Info)
	go func() {
		info, err := h.m.Stop(context.Background(), "s", 3*time.Second)
		if err != nil {
			t.Errorf("Stop: %v", err)
		}
		stopDone <- info
	}()
	h.expect("s", ActionStopping)
	e := h.backend.process(t, 0)
	sandboxtest.WaitFor(t, "SIGTERM", func() bool { return len(e.signals()) > 0 })
	sandboxtest.WaitFor(t, "the grace timer", func() bool { return h.clock.pending() > 0 })
	h.clock.Advance(3 * time.Second)
	if code := <-runDone; code != 137 {
		t.Errorf("workload exit %d, want 137", code)
	}
	info := <-stopDone
	if info.State != StateStopped {
		t.Errorf("after Stop: %s, want stopped", info.State)
	}
	if sigs := e.signals(); len(sigs) != 2 || sigs[0] != unix.SIGTERM || sigs[1] != unix.SIGKILL {
		t.Errorf("signals %v, want SIGTERM then SIGKILL", sigs)
	}
	h.expect("s", ActionStopped)
	// Stopping again changes nothing; runs are refused.
	if info, err := h.m.Stop(context.Background(), "s", 0); err != nil || info.State != StateStopped {
		t.Errorf("second Stop = %+v, %v", info, err)
	}
	if _, err := h.m.Run(context.Background(), "s", Process{Cmd: []string{"echo"}}, nil); !errors.Is(err, ErrConflict) {
		t.Errorf("Run on stopped: %v, want ErrConflict", err)
	}
}

func TestRemove(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "x"})
	go func() { _, _ = h.m.Run(context.Background(), "x", Process{Cmd: []string{"block"}}, nil) }()
	h.expect("x", ActionRunning)
	if err := h.m.Remove(context.Background(), "x", true); err != nil {
		t.Fatalf("Remove force: %v", err)
	}
	h.expect("x", ActionStopping, ActionStopped, ActionRemoved)
	if _, err := h.m.Get("x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after remove: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "sandboxes", "x")); !os.IsNotExist(err) {
		t.Errorf("sandbox dir after remove: %v", err)
	}
	h.backend.mu.Lock()
	destroyed := strings.Join(h.backend.destroys, ",")
	h.backend.mu.Unlock()
	if destroyed != "x" {
		t.Errorf("destroyed %q, want x", destroyed)
	}
	// A ready one needs no force; a starting one is cancelled.
	h.createReady(Spec{ID: "y"})
	if err := h.m.Remove(context.Background(), "y", false); err != nil {
		t.Fatalf("Remove ready: %v", err)
	}
	gate := make(chan struct{})
	h.backend.mu.Lock()
	h.backend.startGate = gate
	h.backend.mu.Unlock()
	h.create(Spec{ID: "z"})
	if err := h.m.Remove(context.Background(), "z", false); err != nil {
		t.Fatalf("Remove starting: %v", err)
	}
	h.expect("z", ActionStopping, ActionStopped, ActionRemoved)
	if got := testutil.ToFloat64(h.m.metrics.sandboxes.WithLabelValues("stopped")); got != 0 {
		t.Errorf("stopped gauge %v after removal, want 0", got)
	}
}

func TestTTL(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "ttl", TTL: time.Minute})
	h.createReady(Spec{ID: "keep"})
	h.clock.Advance(59 * time.Second)
	if st := h.state("ttl"); st != StateReady {
		t.Fatalf("before the TTL: %s", st)
	}
	h.clock.Advance(time.Second)
	h.expect("ttl", ActionStopping, ActionStopped, ActionRemoved)
	if _, err := h.m.Get("ttl"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after TTL: %v, want ErrNotFound", err)
	}
	if st := h.state("keep"); st != StateReady {
		t.Errorf("the sandbox without TTL is %s", st)
	}
}

func TestListFilters(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "a", Labels: map[string]string{"team": "x", "tier": "1"}})
	h.clock.Advance(time.Second)
	h.createReady(Spec{ID: "b", Labels: map[string]string{"team": "x"}})
	h.clock.Advance(time.Second)
	h.createReady(Spec{ID: "c", Labels: map[string]string{"team": "y"}})
	if _, err := h.m.Stop(context.Background(), "c", 0); err != nil {
		t.Fatal(err)
	}
	ids := func(infos []Info) string {
		var s []string
		for _, i := range infos {
			s = append(s, i.ID)
		}
		return strings.Join(s, ",")
	}
	cases := []struct {
		f    Filter
		want string
	}{
		{Filter{}, "a,b,c"},
		{Filter{Labels: map[string]string{"team": "x"}}, "a,b"},
		{Filter{Labels: map[string]string{"team": "x", "tier": "1"}}, "a"},
		{Filter{Labels: map[string]string{"team": "z"}}, ""},
		{Filter{State: StateStopped}, "c"},
		{Filter{State: StateReady, Labels: map[string]string{"team": "y"}}, ""},
	}
	for _, c := range cases {
		if got := ids(h.m.List(c.f)); got != c.want {
			t.Errorf("List(%+v) = %q, want %q", c.f, got, c.want)
		}
	}
}

func TestEventsGoToTheJournal(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "s1"})
	h.createReady(Spec{ID: "s2"})
	// A subscriber that comes late replays what it missed, filtered, in order.
	sub, err := h.m.Events().Subscribe(events.After(0), events.Filter{SandboxID: "s2"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	defer cancel()
	var seq uint64
	for _, want := range []string{ActionCreated, ActionReady} {
		e, line, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v", want, err)
		}
		if e.SandboxID != "s2" || e.Action != want || e.Seq <= seq || len(line) == 0 {
			t.Errorf("event %+v (after seq %d), want s2 %s", e, seq, want)
		}
		seq = e.Seq
	}
}

func TestStartFailureAndInitDeath(t *testing.T) {
	h := newHarness(t)
	h.backend.mu.Lock()
	h.backend.startErr = errors.New("runc run: exit status 1: oci runtime error")
	h.backend.mu.Unlock()
	h.create(Spec{ID: "bad"})
	evs := h.expect("bad", ActionFailed)
	if e := evs[0].Attributes["error"]; !strings.Contains(e, "oci runtime error") || strings.Contains(e, "shut down") {
		t.Errorf("failed event: %v", evs[0].Attributes)
	}
	info, _ := h.m.Get("bad")
	if info.State != StateFailed || !strings.Contains(info.Error, "oci runtime error") {
		t.Errorf("Get = %+v", info)
	}
	h.backend.mu.Lock()
	h.backend.startErr = nil
	h.backend.mu.Unlock()
	h.createReady(Spec{ID: "dies"})
	h.backend.killInit("dies")
	evs = h.expect("dies", ActionFailed)
	if !strings.Contains(evs[0].Attributes["error"], "init exited") {
		t.Errorf("failed event: %v", evs[0].Attributes)
	}
	if err := h.m.Remove(context.Background(), "dies", false); err != nil {
		t.Errorf("Remove failed sandbox: %v", err)
	}
}

func TestCreateCmdRunsOnceReady(t *testing.T) {
	h := newHarness(t)
	h.create(Spec{ID: "cmd", Cmd: []string{"fail", "7", "x"}})
	evs := h.expect("cmd", ActionReady, ActionRunning, ActionIdle)
	if evs[2].Attributes["exit_code"] != "7" {
		t.Errorf("idle = %v, want exit_code 7", evs[2].Attributes)
	}
	info, _ := h.m.Get("cmd")
	if info.State != StateReady || info.LastExitCode == nil || *info.LastExitCode != 7 {
		t.Errorf("after the create cmd: %+v", info)
	}
	// It is a detached run like any other: listed, its output kept.
	runs, err := h.m.Runs("cmd")
	if err != nil || len(runs) != 1 || !runs[0].Detached || runs[0].ExitCode == nil || *runs[0].ExitCode != 7 ||
		!slices.Equal(runs[0].Cmd, []string{"fail", "7", "x"}) {
		t.Fatalf("Runs: %+v, %v; want the create cmd, detached, exited 7", runs, err)
	}
	chunks, _ := readAll(t, h.m, "cmd", runs[0].ID, 0)
	if _, stderr := joined(t, chunks, 0); string(stderr) != "x" {
		t.Errorf("its stderr %q, want %q", stderr, "x")
	}
}

// TestReadopt restarts the manager over records of every kind.
func TestReadopt(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "alive", TTL: time.Hour})
	h.createReady(Spec{ID: "dead"})
	h.createReady(Spec{ID: "busy"})
	h.createReady(Spec{ID: "done"})
	if _, err := h.m.Stop(context.Background(), "done", 0); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = h.m.Run(context.Background(), "busy", Process{Cmd: []string{"block"}}, nil) }()
	h.expect("busy", ActionRunning)
	detached, err := h.m.StartRun("busy", RunRequest{Process: Process{Cmd: []string{"block"}}})
	if err != nil {
		t.Fatal(err)
	}
	sandboxtest.WaitFor(t, "the running record", func() bool {
		rec, _, err := readRecord(filepath.Join(h.dir, "sandboxes", "busy"))
		return err == nil && rec.State == StateRunning && len(rec.Runs) == 2
	})
	// The agent dies: no Close, the records stay as they are. A second
	// manager must not see the first one's goroutines, so copy the state
	// dir as the crash left it.
	crash := t.TempDir()
	copyTree(t, filepath.Join(h.dir, "sandboxes"), filepath.Join(crash, "sandboxes"))
	// A record caught mid-start, one caught mid-restore, and debris
	// without a record.
	writeRecordForTest(t, filepath.Join(crash, "sandboxes", "half"), record{Spec: Spec{ID: "half"}, State: StateStarting, CreatedAt: h.clock.Now()})
	writeRecordForTest(t, filepath.Join(crash, "sandboxes", "restoring"), record{Spec: Spec{ID: "restoring"}, State: StateStarting,
		CreatedAt: h.clock.Now(), Restored: &restoredFrom{SnapshotID: "snap"}})
	if err := os.MkdirAll(filepath.Join(crash, "sandboxes", "debris", "upper"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.backend.killInit("dead")

	h2 := &harness{t: t, backend: h.backend, clock: h.clock, dir: crash}
	h2.start()
	want := map[string]State{"alive": StateReady, "dead": StateFailed, "busy": StateReady, "done": StateStopped, "half": StateFailed}
	for id, st := range want {
		if got := h2.state(id); got != st {
			t.Errorf("%s: %s after restart, want %s", id, got, st)
		}
	}
	if info, _ := h2.m.Get("dead"); !strings.Contains(info.Error, "init exited while the agent was down") {
		t.Errorf("dead: error %q", info.Error)
	}
	busy, _ := h2.m.Get("busy")
	if busy.LastExitCode == nil || *busy.LastExitCode != ExitLost || !strings.Contains(busy.Error, "lost") {
		t.Errorf("busy: %+v, want the run recorded as lost", busy)
	}
	// Both runs, the attached one and the detached one, are listed lost.
	runs, err := h2.m.Runs("busy")
	if err != nil || len(runs) != 2 {
		t.Fatalf("Runs(busy) after restart = %+v, %v; want 2 lost runs", runs, err)
	}
	for _, r := range runs {
		if r.State != RunLost || r.ExitCode != nil || r.Error == "" {
			t.Errorf("run after restart: %+v, want lost", r)
		}
	}
	if r, err := h2.m.GetRun("busy", detached.ID); err != nil || !r.Detached || r.State != RunLost {
		t.Errorf("the detached run after restart: %+v, %v; want it lost, by its id", r, err)
	}
	if _, err := h2.m.ReadRunOutput(context.Background(), "busy", detached.ID, 0, true, func([]OutputChunk) error { return nil }); err != nil {
		t.Errorf("reading a lost run's output: %v, want an empty output", err)
	}
	h.backend.mu.Lock()
	killed := strings.Join(h.backend.killed, ",")
	h.backend.mu.Unlock()
	if killed != "busy" {
		t.Errorf("KillWorkloads on %q, want busy", killed)
	}
	if _, err := os.Stat(filepath.Join(crash, "sandboxes", "debris")); !os.IsNotExist(err) {
		t.Errorf("debris left: %v", err)
	}
	// A restore leaves a ready sandbox or none.
	if _, err := h2.m.Get("restoring"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a restore cut short is listed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(crash, "sandboxes", "restoring")); !os.IsNotExist(err) {
		t.Errorf("a restore cut short left its files: %v", err)
	}
	if got := testutil.ToFloat64(h2.m.metrics.sandboxes.WithLabelValues("failed")); got != 2 {
		t.Errorf("failed gauge %v, want 2", got)
	}
	// The adopted sandbox runs, and its TTL still counts from creation.
	if code, err := h2.m.Run(context.Background(), "alive", Process{Cmd: []string{"echo"}}, nil); err != nil || code != 0 {
		t.Errorf("Run after restart = %d, %v", code, err)
	}
	h.clock.Advance(time.Hour)
	h2.expect("alive", ActionStopping, ActionStopped, ActionRemoved)
}

func writeRecordForTest(t *testing.T, dir string, rec record) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	store := recordStore{dir: dir}
	if err := store.write(rec); err != nil {
		t.Fatal(err)
	}
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	out, err := exec.Command("cp", "-a", src, dst).CombinedOutput()
	if err != nil {
		t.Fatalf("cp -a %s %s: %v: %s", src, dst, err, out)
	}
}

func TestCloseKillsRunsAndEndsSubscriptions(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "c", TTL: time.Minute})
	done := make(chan int)
	go func() {
		code, _ := h.m.Run(context.Background(), "c", Process{Cmd: []string{"block"}}, nil)
		done <- code
	}()
	h.expect("c", ActionRunning)
	if err := h.m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 137 {
		t.Errorf("run at close: exit %d, want 137", code)
	}
	// The manager's own journal closed with it, ending its subscriptions.
	for {
		if _, _, err := h.events.Next(context.Background()); err != nil {
			if !errors.Is(err, events.ErrClosed) {
				t.Errorf("subscription ended with %v, want events.ErrClosed", err)
			}
			break
		}
	}
	if _, _, err := h.m.Create(context.Background(), Spec{}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Create after Close: %v, want ErrUnavailable", err)
	}
	if h.clock.pending() != 0 {
		t.Errorf("%d timers armed after Close", h.clock.pending())
	}
	if _, err := h.m.Events().Subscribe(events.Live(), events.Filter{}); !errors.Is(err, events.ErrClosed) {
		t.Errorf("Subscribe after Close: %v, want events.ErrClosed", err)
	}
	// The record kept the sandbox ready for the next agent.
	rec, _, err := readRecord(filepath.Join(h.dir, "sandboxes", "c"))
	if err != nil || rec.State != StateReady || rec.Run != nil || rec.Runs != nil {
		t.Errorf("record after Close = %+v, %v", rec, err)
	}
}

func TestMetricsPromtool(t *testing.T) {
	promtool := testenv.RequireBinary(t, "promtool")
	h := newHarness(t)
	h.createReady(Spec{ID: "m"})
	if _, err := h.m.Run(context.Background(), "m", Process{Cmd: []string{"echo"}}, nil); err != nil {
		t.Fatal(err)
	}
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"arcbox_agent_sandboxes", "arcbox_agent_sandbox_create_to_ready_seconds",
		"arcbox_agent_sandbox_run_seconds", "arcbox_agent_sandbox_checkpoint_seconds", "arcbox_agent_sandbox_restore_to_ready_seconds"} {
		if !names[n] {
			t.Errorf("metric %s missing", n)
		}
	}
	if got := testutil.ToFloat64(h.m.metrics.sandboxes.WithLabelValues("ready")); got != 1 {
		t.Errorf("ready gauge %v, want 1", got)
	}
	for _, want := range []string{"arcbox_agent_sandbox_create_to_ready_seconds_count 1", "arcbox_agent_sandbox_run_seconds_count 1",
		`arcbox_agent_sandboxes{state="ready"} 1`, "arcbox_agent_sandbox_checkpoint_seconds_count 0"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, text.String())
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = &text
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n%s", err, out, text.String())
	}
}
