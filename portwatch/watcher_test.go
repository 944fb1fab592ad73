package portwatch

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeDumper answers dumps with whatever the test last set. Like the
// kernel's, it skips a dump that is not forced when its "counters" (a
// version that set moves and setQuietly does not) have not moved.
type fakeDumper struct {
	mu            sync.Mutex
	ls            []Listener
	err           error
	version       int
	dumpedVersion int // version at the last good dump; -1 before one
	forced        int // forced dumps so far
	closed        bool
}

func newFakeDumper(ls ...Listener) *fakeDumper {
	return &fakeDumper{ls: ls, dumpedVersion: -1}
}

func (d *fakeDumper) set(ls ...Listener) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ls, d.err = ls, nil
	d.version++
}

// setQuietly changes the listeners without moving the counters: a close
// and an open in one scan that cancel out.
func (d *fakeDumper) setQuietly(ls ...Listener) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ls = ls
}

func (d *fakeDumper) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.err = err
}

func (d *fakeDumper) dump(dst []Listener, force bool) ([]Listener, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if force {
		d.forced++
	}
	if d.err != nil {
		d.dumpedVersion = -1
		return dst, false, d.err
	}
	if !force && d.version == d.dumpedVersion {
		return dst, false, nil
	}
	d.dumpedVersion = d.version
	return append(dst, d.ls...), true, nil
}

func (d *fakeDumper) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
}

// fakeSource hands the watcher the sandboxes the test puts in want.
type fakeSource struct {
	guestD   *fakeDumper
	guestErr error
	syncErr  error
	want     map[string]*fakeDumper // the sandboxes there are now
	handed   map[string]*fakeDumper // what the watcher was told of
	closed   bool
}

func newFakeSource() *fakeSource {
	return &fakeSource{guestD: newFakeDumper(), want: map[string]*fakeDumper{}, handed: map[string]*fakeDumper{}}
}

func (s *fakeSource) guest() (dumper, error) {
	if s.guestErr != nil {
		return nil, s.guestErr
	}
	return s.guestD, nil
}

func (s *fakeSource) sync(appeared func(string, dumper), went func(string)) error {
	if s.syncErr != nil {
		return s.syncErr
	}
	for id, d := range s.handed {
		if s.want[id] != d {
			delete(s.handed, id)
			went(id)
		}
	}
	for id, d := range s.want {
		if s.handed[id] == nil {
			s.handed[id] = d
			appeared(id, d)
		}
	}
	return nil
}

func (s *fakeSource) close() { s.closed = true }

// event is one call of OnOpen or OnClose.
type event struct {
	open bool
	l    Listener
}

func (e event) String() string {
	if e.open {
		return "open " + e.l.Protocol + " " + netip.AddrPortFrom(e.l.Address, e.l.Port).String() + " " + e.l.Sandbox
	}
	return "close " + e.l.Protocol + " " + netip.AddrPortFrom(e.l.Address, e.l.Port).String() + " " + e.l.Sandbox
}

// newTestWatcher returns a watcher on src, started, and the events it
// reports, collected as scans run. The periods of cfg are used; its
// callbacks and logger are the test's.
func newTestWatcher(t *testing.T, src *fakeSource, cfg Config) (*Watcher, *[]event) {
	t.Helper()
	var evs []event
	cfg.OnOpen = func(l Listener) { evs = append(evs, event{true, l}) }
	cfg.OnClose = func(l Listener) { evs = append(evs, event{false, l}) }
	cfg.Logger = slog.New(slog.DiscardHandler)
	w := New(cfg)
	if err := w.start(src); err != nil {
		t.Fatal(err)
	}
	return w, &evs
}

// takeEvents returns the events reported so far and forgets them.
func takeEvents(evs *[]event) []event {
	out := *evs
	*evs = nil
	return out
}

func tcp(addr string, port uint16, sandbox string) Listener {
	return Listener{Protocol: TCP, Address: netip.MustParseAddr(addr), Port: port, Sandbox: sandbox}
}

func udp(addr string, port uint16, sandbox string) Listener {
	return Listener{Protocol: UDP, Address: netip.MustParseAddr(addr), Port: port, Sandbox: sandbox}
}

func opened(l Listener) event { return event{true, l} }
func closed(l Listener) event { return event{false, l} }

func assertEvents(t *testing.T, got []event, want ...event) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("events\n got %v\nwant %v", got, want)
	}
}

func TestScanGuest(t *testing.T) {
	src := newFakeSource()
	src.guestD.set(tcp("0.0.0.0", 22, ""), udp("::", 53, ""))
	w, evs := newTestWatcher(t, src, Config{})

	w.scan(src)
	assertEvents(t, takeEvents(evs), opened(tcp("0.0.0.0", 22, "")), opened(udp("::", 53, "")))

	w.scan(src)
	assertEvents(t, takeEvents(evs))

	// Several sockets on one address (SO_REUSEPORT) are one listener, in
	// whatever order the kernel lists them.
	src.guestD.set(tcp("0.0.0.0", 8080, ""), udp("::", 53, ""), tcp("0.0.0.0", 8080, ""), tcp("0.0.0.0", 22, ""))
	w.scan(src)
	assertEvents(t, takeEvents(evs), opened(tcp("0.0.0.0", 8080, "")))

	// Closes come before opens.
	src.guestD.set(tcp("0.0.0.0", 8080, ""), tcp("::", 22, ""))
	w.scan(src)
	assertEvents(t, takeEvents(evs),
		closed(tcp("0.0.0.0", 22, "")), closed(udp("::", 53, "")), opened(tcp("::", 22, "")))

	if got, want := w.Listeners(), []Listener{tcp("0.0.0.0", 8080, ""), tcp("::", 22, "")}; !slices.Equal(got, want) {
		t.Fatalf("Listeners() = %v, want %v", got, want)
	}
}

func TestScanDumpFailureKeepsListeners(t *testing.T) {
	src := newFakeSource()
	src.guestD.set(tcp("127.0.0.1", 80, ""))
	w, evs := newTestWatcher(t, src, Config{})
	w.scan(src)
	takeEvents(evs)

	src.guestD.fail(errors.New("netlink broke"))
	w.scan(src)
	w.scan(src)
	assertEvents(t, takeEvents(evs))
	if got := w.Listeners(); len(got) != 1 {
		t.Fatalf("Listeners() = %v after a failed dump, want the one from before", got)
	}

	src.guestD.set()
	w.scan(src)
	assertEvents(t, takeEvents(evs), closed(tcp("127.0.0.1", 80, "")))
}

func TestScanSandboxes(t *testing.T) {
	src := newFakeSource()
	w, evs := newTestWatcher(t, src, Config{})
	w.scan(src)
	assertEvents(t, takeEvents(evs))

	a, b := newFakeDumper(), newFakeDumper()
	a.set(tcp("0.0.0.0", 80, ""))
	b.set(tcp("0.0.0.0", 80, ""), udp("0.0.0.0", 69, ""))
	src.want["a"], src.want["b"] = a, b
	w.scan(src)
	got := takeEvents(evs)
	slices.SortFunc(got, func(x, y event) int { return compareListeners(x.l, y.l) })
	assertEvents(t, got, opened(tcp("0.0.0.0", 80, "a")), opened(tcp("0.0.0.0", 80, "b")), opened(udp("0.0.0.0", 69, "b")))

	want := []Listener{tcp("0.0.0.0", 80, "a"), tcp("0.0.0.0", 80, "b"), udp("0.0.0.0", 69, "b")}
	if got := w.Listeners(); !slices.Equal(got, want) {
		t.Fatalf("Listeners() = %v, want %v", got, want)
	}

	// A namespace that goes reports its listeners closed, and its socket
	// is closed, so the namespace can be freed.
	delete(src.want, "b")
	w.scan(src)
	assertEvents(t, takeEvents(evs), closed(tcp("0.0.0.0", 80, "b")), closed(udp("0.0.0.0", 69, "b")))
	if !b.closed {
		t.Fatal("the gone namespace's dumper was not closed")
	}

	// A namespace replaced under the same id: the old one's listeners
	// close, the new one's open.
	a2 := newFakeDumper()
	a2.set(tcp("0.0.0.0", 8080, ""))
	src.want["a"] = a2
	w.scan(src)
	assertEvents(t, takeEvents(evs), closed(tcp("0.0.0.0", 80, "a")), opened(tcp("0.0.0.0", 8080, "a")))
	if !a.closed {
		t.Fatal("the replaced namespace's dumper was not closed")
	}
}

func TestScanSyncFailureKeepsSandboxes(t *testing.T) {
	src := newFakeSource()
	a := newFakeDumper(tcp("0.0.0.0", 80, ""))
	src.want["a"] = a
	w, evs := newTestWatcher(t, src, Config{})
	w.scan(src)
	takeEvents(evs)

	src.syncErr = errors.New("directory unreadable")
	a.set(tcp("0.0.0.0", 80, ""), tcp("0.0.0.0", 81, ""))
	w.scan(src)
	assertEvents(t, takeEvents(evs), opened(tcp("0.0.0.0", 81, "a")))
}

// An idle scan, nothing changed, allocates nothing, whatever the number of
// namespaces.
func TestScanIdleAllocs(t *testing.T) {
	src := newFakeSource()
	src.guestD.set(tcp("0.0.0.0", 22, ""), udp("::", 53, ""))
	for _, id := range []string{"a", "b", "c"} {
		src.want[id] = newFakeDumper(tcp("0.0.0.0", 80, ""), tcp("0.0.0.0", 80, ""))
	}
	w, _ := newTestWatcher(t, src, Config{})
	w.scan(src)
	if n := testing.AllocsPerRun(100, func() { w.scan(src) }); n != 0 {
		t.Fatalf("an idle scan allocates %v times, want 0", n)
	}
}

// A namespace whose counters did not move is not dumped, but it is every
// Recheck: a change that cancelled out in its counters is seen then.
func TestScanRecheck(t *testing.T) {
	src := newFakeSource()
	a, b := newFakeDumper(), newFakeDumper()
	src.want["a"], src.want["b"] = a, b
	w, evs := newTestWatcher(t, src, Config{Interval: 10 * time.Millisecond, Recheck: 30 * time.Millisecond})
	w.scan(src) // scan 0: every namespace's first dump is forced
	if src.guestD.forced != 1 || a.forced != 1 || b.forced != 1 {
		t.Fatalf("forced dumps after the first scan: guest %d, a %d, b %d; want 1 each", src.guestD.forced, a.forced, b.forced)
	}
	a.setQuietly(tcp("0.0.0.0", 80, ""))
	for range 6 { // scans 1 to 6: each namespace is forced twice, on scans of its own
		w.scan(src)
	}
	if src.guestD.forced != 3 || a.forced != 3 || b.forced != 3 {
		t.Fatalf("forced dumps after 7 scans of Recheck 3: guest %d, a %d, b %d; want 3 each", src.guestD.forced, a.forced, b.forced)
	}
	assertEvents(t, takeEvents(evs), opened(tcp("0.0.0.0", 80, "a")))

	// Counters that move are dumped on the next scan.
	b.set(udp("::", 53, ""))
	w.scan(src)
	assertEvents(t, takeEvents(evs), opened(udp("::", 53, "b")))
}

// The namespaces' forced dumps are spread over the scans of a Recheck.
func TestScanRecheckSpread(t *testing.T) {
	src := newFakeSource()
	ds := []*fakeDumper{newFakeDumper(), newFakeDumper(), newFakeDumper()}
	for i, d := range ds {
		src.want[string(rune('a'+i))] = d
	}
	w, _ := newTestWatcher(t, src, Config{Interval: 10 * time.Millisecond, Recheck: 40 * time.Millisecond})
	w.scan(src)
	for scan := 1; scan <= 8; scan++ {
		before := src.guestD.forced + ds[0].forced + ds[1].forced + ds[2].forced
		w.scan(src)
		if n := src.guestD.forced + ds[0].forced + ds[1].forced + ds[2].forced - before; n != 1 {
			t.Fatalf("scan %d forced %d dumps; want 1: four namespaces, one each of four scans", scan, n)
		}
	}
}

// A negative Recheck dumps every namespace every scan.
func TestScanNoRecheckGate(t *testing.T) {
	src := newFakeSource()
	w, evs := newTestWatcher(t, src, Config{Recheck: -1})
	w.scan(src)
	src.guestD.setQuietly(tcp("127.0.0.1", 1, ""))
	w.scan(src)
	assertEvents(t, takeEvents(evs), opened(tcp("127.0.0.1", 1, "")))
	if src.guestD.forced != 2 {
		t.Fatalf("%d forced dumps in 2 scans, want 2", src.guestD.forced)
	}
}

func TestRun(t *testing.T) {
	src := newFakeSource()
	src.guestD.set(tcp("0.0.0.0", 22, ""))
	a := newFakeDumper()
	src.want["a"] = a
	opens := make(chan Listener, 16)
	w := New(Config{Interval: time.Millisecond, OnOpen: func(l Listener) { opens <- l }})
	w.newSrc = func(Config, *slog.Logger) (source, error) { return src, nil }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	select {
	case l := <-opens:
		if l != tcp("0.0.0.0", 22, "") {
			t.Fatalf("first open %v, want the guest's port 22", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no open event")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if !src.closed || !src.guestD.closed || !a.closed {
		t.Fatalf("after Run: source closed %v, guest %v, sandbox %v; want all closed", src.closed, src.guestD.closed, a.closed)
	}
	if got := w.Listeners(); len(got) != 0 {
		t.Fatalf("Listeners() = %v after Run, want none", got)
	}
}

func TestRunGuestFailure(t *testing.T) {
	src := newFakeSource()
	src.guestErr = errors.New("no netlink")
	w := New(Config{})
	w.newSrc = func(Config, *slog.Logger) (source, error) { return src, nil }
	if err := w.Run(context.Background()); err == nil || err.Error() != "no netlink" {
		t.Fatalf("Run = %v, want the guest's error", err)
	}
	if !src.closed {
		t.Fatal("source left open")
	}
}
