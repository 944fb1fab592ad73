package portwatch

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"golang.org/x/sys/unix"
)

// waitFor bounds every wait for an event: a failure guard for a busy
// machine, never a measure of speed (the benchmarks measure that).
const waitFor = 60 * time.Second

// events is the log of what a running watcher reported.
type events struct {
	ch   chan event
	seen []event
	used []bool // seen[i] was awaited
}

// startWatcher runs a watcher of netnsDir until the test ends.
func startWatcher(t *testing.T, netnsDir string) (*Watcher, *events) {
	t.Helper()
	ev := &events{ch: make(chan event, 4096)}
	w := New(Config{
		NetnsDir: netnsDir,
		OnOpen:   func(l Listener) { ev.ch <- event{true, l} },
		OnClose:  func(l Listener) { ev.ch <- event{false, l} },
		Logger:   slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w, ev
}

// testWriter sends the watcher's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// await returns when want has come, and fails the test if it does not.
// Events of different namespaces come in no set order, so want may be
// one read before, while awaiting another; each event is awaited once.
func (e *events) await(t *testing.T, want event) {
	t.Helper()
	for i, got := range e.seen {
		if got == want && !e.used[i] {
			e.used[i] = true
			return
		}
	}
	deadline := time.After(waitFor)
	for {
		select {
		case got := <-e.ch:
			e.seen = append(e.seen, got)
			e.used = append(e.used, got == want)
			if got == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %v in %v; saw %v", want, waitFor, e.seen)
		}
	}
}

// sawPort tells whether any event read so far was about port.
func (e *events) sawPort(port uint16) bool {
	for _, ev := range e.seen {
		if ev.l.Port == port {
			return true
		}
	}
	return false
}

func tcpPort(l net.Listener) uint16 { return uint16(l.Addr().(*net.TCPAddr).Port) }

func udpPort(c net.PacketConn) uint16 { return uint16(c.LocalAddr().(*net.UDPAddr).Port) }

func TestGuestListeners(t *testing.T) {
	testenv.RequireIsolated(t)
	_, ev := startWatcher(t, "")

	// A connected UDP socket, a client's, is no listener.
	client, err := net.Dial("udp", "127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	clientPort := uint16(client.LocalAddr().(*net.UDPAddr).Port)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lt := Listener{Protocol: TCP, Address: netip.MustParseAddr("127.0.0.1"), Port: tcpPort(l)}
	ev.await(t, opened(lt))

	u, err := net.ListenPacket("udp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	lu := Listener{Protocol: UDP, Address: netip.IPv6Unspecified(), Port: udpPort(u)}
	ev.await(t, opened(lu))

	l.Close()
	ev.await(t, closed(lt))
	u.Close()
	ev.await(t, closed(lu))
	if ev.sawPort(clientPort) {
		t.Fatalf("the connected UDP socket on port %d was reported: %v", clientPort, ev.seen)
	}
}

// Sockets sharing a port with SO_REUSEPORT are one listener: it opens
// with the first and closes with the last.
func TestGuestReusePort(t *testing.T) {
	testenv.RequireIsolated(t)
	_, ev := startWatcher(t, "")

	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	first, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	second, err := lc.Listen(context.Background(), "tcp", first.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	shared := Listener{Protocol: TCP, Address: netip.MustParseAddr("127.0.0.1"), Port: tcpPort(first)}
	ev.await(t, opened(shared))

	first.Close()
	// A listener opened after the first socket closed: once its open is
	// seen, so would a close of the shared port have been.
	marker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer marker.Close()
	ev.await(t, opened(Listener{Protocol: TCP, Address: netip.MustParseAddr("127.0.0.1"), Port: tcpPort(marker)}))
	for _, e := range ev.seen {
		if e.l == shared && !e.open {
			t.Fatalf("the shared port closed while a socket still listened on it: %v", ev.seen)
		}
	}

	second.Close()
	ev.await(t, closed(shared))
}

func TestSandboxListeners(t *testing.T) {
	testenv.RequireIsolated(t)
	dir := filepath.Join(t.TempDir(), "netns")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w, ev := startWatcher(t, dir)

	ns := newTestNetns(t)
	path := filepath.Join(dir, "sb-1")
	ns.bind(t, path)
	var (
		l   net.Listener
		u   net.PacketConn
		err error
	)
	ns.run(func() {
		if l, err = net.Listen("tcp4", "0.0.0.0:0"); err == nil {
			u, err = net.ListenPacket("udp4", "0.0.0.0:0")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	any4 := netip.IPv4Unspecified()
	lt := Listener{Protocol: TCP, Address: any4, Port: tcpPort(l), Sandbox: "sb-1"}
	lu := Listener{Protocol: UDP, Address: any4, Port: udpPort(u), Sandbox: "sb-1"}
	ev.await(t, opened(lt))
	ev.await(t, opened(lu))

	l.Close()
	ev.await(t, closed(lt))

	// The sandbox goes (its namespace unmounted and removed) with a
	// socket still open in it: its listener is reported closed.
	if err := unbindNetns(path); err != nil {
		t.Fatal(err)
	}
	ev.await(t, closed(lu))
	for _, l := range w.Listeners() {
		if l.Sandbox == "sb-1" {
			t.Fatalf("Listeners() still has %v after its namespace went", l)
		}
	}
}

// A sandbox already there when the watcher starts is reported with the
// guest's listeners; a namespace file created before its namespace is
// mounted on it (as sandbox/network makes it) is watched once it is.
func TestSandboxPresentAtStartAndMountedLater(t *testing.T) {
	testenv.RequireIsolated(t)
	dir := t.TempDir()

	g, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	a := newTestNetns(t)
	a.bind(t, filepath.Join(dir, "a"))
	var la net.Listener
	a.run(func() { la, err = net.Listen("tcp", "[::]:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	if err := os.WriteFile(filepath.Join(dir, "b"), nil, 0o444); err != nil {
		t.Fatal(err)
	}

	_, ev := startWatcher(t, dir)
	ev.await(t, opened(Listener{Protocol: TCP, Address: netip.MustParseAddr("127.0.0.1"), Port: tcpPort(g)}))
	ev.await(t, opened(Listener{Protocol: TCP, Address: netip.IPv6Unspecified(), Port: tcpPort(la), Sandbox: "a"}))

	// The first scan has seen b, not a namespace yet. Mounting one on it
	// makes no inotify event: the watcher finds it by looking again.
	b := newTestNetns(t)
	var lb net.PacketConn
	b.run(func() { lb, err = net.ListenPacket("udp4", "0.0.0.0:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	b.bind(t, filepath.Join(dir, "b"))
	ev.await(t, opened(Listener{Protocol: UDP, Address: netip.IPv4Unspecified(), Port: udpPort(lb), Sandbox: "b"}))
}

// The netns directory may come after the watcher, and go and come back.
func TestNetnsDirComesAndGoes(t *testing.T) {
	testenv.RequireIsolated(t)
	dir := filepath.Join(t.TempDir(), "state", "netns")

	g, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	_, ev := startWatcher(t, dir)
	ev.await(t, opened(Listener{Protocol: TCP, Address: netip.MustParseAddr("127.0.0.1"), Port: tcpPort(g)}))

	for round := range 2 {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		ns := newTestNetns(t)
		path := filepath.Join(dir, "x")
		ns.bind(t, path)
		var l net.Listener
		ns.run(func() { l, err = net.Listen("tcp4", "0.0.0.0:0") })
		if err != nil {
			t.Fatal(err)
		}
		lx := Listener{Protocol: TCP, Address: netip.IPv4Unspecified(), Port: tcpPort(l), Sandbox: "x"}
		ev.await(t, opened(lx))
		if err := unbindNetns(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
		ev.await(t, closed(lx))
		l.Close()
		t.Logf("round %d: sandbox x opened and closed", round)
	}
}

// A sandbox id reused for a new namespace: the old one's listeners close
// and the new one's open, however quickly the one replaces the other.
func TestSandboxReplaced(t *testing.T) {
	testenv.RequireIsolated(t)
	dir := t.TempDir()
	_, ev := startWatcher(t, dir)
	path := filepath.Join(dir, "s")

	listenIn := func(ns *testNetns) net.Listener {
		var (
			l   net.Listener
			err error
		)
		ns.run(func() { l, err = net.Listen("tcp4", "0.0.0.0:0") })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	old := newTestNetns(t)
	old.bind(t, path)
	l1 := listenIn(old)
	ev.await(t, opened(Listener{Protocol: TCP, Address: netip.IPv4Unspecified(), Port: tcpPort(l1), Sandbox: "s"}))

	repl := newTestNetns(t)
	l2 := listenIn(repl)
	for tcpPort(l2) == tcpPort(l1) { // the same port by chance: the test could not tell them apart
		l2.Close()
		l2 = listenIn(repl)
	}
	if err := unbindNetns(path); err != nil {
		t.Fatal(err)
	}
	repl.bind(t, path)
	ev.await(t, closed(Listener{Protocol: TCP, Address: netip.IPv4Unspecified(), Port: tcpPort(l1), Sandbox: "s"}))
	ev.await(t, opened(Listener{Protocol: TCP, Address: netip.IPv4Unspecified(), Port: tcpPort(l2), Sandbox: "s"}))
}

// A bound UDP socket that connects stops being a listener without moving
// any counter: the Recheck dump sees it.
func TestUDPConnectSeenByRecheck(t *testing.T) {
	testenv.RequireIsolated(t)
	_, ev := startWatcher(t, "")

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	lu := Listener{Protocol: UDP, Address: netip.MustParseAddr("127.0.0.1"), Port: uint16(sa.(*unix.SockaddrInet4).Port)}
	ev.await(t, opened(lu))

	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 9}); err != nil {
		t.Fatal(err)
	}
	ev.await(t, closed(lu))
}

// Enough listeners that the kernel's reply spans many datagrams, each
// queued as the one before it is read.
func TestManyListeners(t *testing.T) {
	testenv.RequireIsolated(t)
	_, ev := startWatcher(t, "")
	const n = 400
	var want []event
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		want = append(want, opened(Listener{Protocol: TCP, Address: netip.MustParseAddr("127.0.0.1"), Port: tcpPort(l)}))
	}
	for _, e := range want {
		ev.await(t, e)
	}
	for i, l := range ls {
		l.Close()
		want[i].open = false
	}
	for _, e := range want {
		ev.await(t, e)
	}
}

// An idle scan of the kernel, the guest's and a sandbox's namespaces,
// with listeners in both, allocates nothing: counters, dumps (forced each
// Recheck) and the inotify read all reuse their buffers.
func TestKernelIdleScanAllocs(t *testing.T) {
	testenv.RequireIsolated(t)
	dir := t.TempDir()
	g, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ns := newTestNetns(t)
	ns.bind(t, filepath.Join(dir, "a"))
	var u net.PacketConn
	ns.run(func() { u, err = net.ListenPacket("udp", "[::]:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()

	w := New(Config{NetnsDir: dir, Recheck: 4 * DefaultInterval})
	src, err := newKernelSource(w.cfg, w.log)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.start(src); err != nil {
		t.Fatal(err)
	}
	defer w.stop(src)
	w.scan(src)
	if got := w.Listeners(); len(got) != 2 {
		t.Fatalf("Listeners() = %v, want the guest's and the sandbox's", got)
	}
	if n := testing.AllocsPerRun(40, func() { w.scan(src) }); n != 0 {
		t.Fatalf("an idle scan allocates %v times, want 0", n)
	}
}

// The per-family requests a kernel without TCPDIAG_GETSOCK gets find the
// same listeners as the usual ones.
func TestDumpQueriesAgree(t *testing.T) {
	testenv.RequireIsolated(t)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "[::]:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
	}
	u, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()

	s, err := newDiagSocket(make([]byte, replyBufSize))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	usual, err := s.dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	s.queries = queriesV2
	v2, err := s.dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(usual, compareListeners)
	slices.SortFunc(v2, compareListeners)
	if len(usual) != 4 || !slices.Equal(usual, v2) {
		t.Fatalf("dumps: usual %v, per family %v; want the same 4 listeners", usual, v2)
	}
}
