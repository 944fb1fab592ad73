package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/startup"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newTestListeners(t *testing.T, allow ...uint32) (*Listeners, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return NewListeners(ListenersConfig{Logger: quiet, Phases: startup.New(reg, time.Now()), Registerer: reg, AllowCIDs: allow}), reg
}

// serveOK answers every request on ln with 200 "ok".
func serveOK(t *testing.T) func(net.Listener) {
	return func(ln net.Listener) {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
}

func TestBindTCPAndUnixServeRealSockets(t *testing.T) {
	ls, reg := newTestListeners(t)
	ctx := context.Background()
	tcp, _ := ParseEndpoint("tcp://:0")
	sock := t.TempDir() + "/a.sock"
	unix, _ := ParseEndpoint("unix://" + sock)
	for _, ep := range []Endpoint{tcp, unix} {
		if err := ls.Bind(ctx, "control", ep, serveOK(t)); err != nil {
			t.Fatal(err)
		}
	}
	ready, list := ls.Status()
	if !ready || len(list) != 2 {
		t.Fatalf("status = %v %+v, want ready with two listeners", ready, list)
	}
	if !strings.HasPrefix(list[0].Address, "127.0.0.1:") {
		t.Errorf("tcp bound to %s, want loopback", list[0].Address)
	}
	resp, err := http.Get("http://" + list[0].Address + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	uc := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err = uc.Get("http://agent/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n, _ := testutil.GatherAndCount(reg, "arcbox_agent_startup_phase_end_seconds"); n != 2 {
		t.Errorf("startup phases recorded = %d, want one per listener", n)
	}
}

func TestBindTCPInUseIsAnError(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	ls, _ := newTestListeners(t)
	ep, _ := ParseEndpoint("tcp://" + busy.Addr().String())
	if err := ls.Bind(context.Background(), "control", ep, serveOK(t)); err == nil {
		t.Fatal("bind on a busy port succeeded")
	}
	if ready, list := ls.Status(); ready || list[0].State != StateClosed || list[0].Error == "" {
		t.Errorf("status = %v %+v, want not ready, closed, with the error", ready, list)
	}
}

// TestVsockRetryBackoff fails the first binds as a VM's late vsock device
// would, and checks the waits between tries and the state along the way.
func TestVsockRetryBackoff(t *testing.T) {
	ls, _ := newTestListeners(t)
	var mu sync.Mutex
	var waits []time.Duration
	failures := 6
	ls.listen = func(Endpoint) (net.Listener, error) {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return nil, fmt.Errorf("bind: %w", syscall.ENODEV)
		}
		return net.Listen("tcp", "127.0.0.1:0")
	}
	waited := make(chan struct{}, 16)
	ls.bindWait = func(ctx context.Context, d time.Duration) bool {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		waited <- struct{}{}
		return true
	}
	bound := make(chan net.Listener, 1)
	ep, _ := ParseEndpoint("vsock://:1024")
	if err := ls.Bind(context.Background(), "control", ep, func(ln net.Listener) { bound <- ln }); err != nil {
		t.Fatalf("a vsock bind failure must not be an error: %v", err)
	}
	if ready, list := ls.Status(); ready && list[0].State == StateBound {
		t.Log("bound before the status was read") // possible, harmless
	}
	select {
	case ln := <-bound:
		ln.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("never bound")
	}
	want := []time.Duration{120 * time.Millisecond, 180 * time.Millisecond, 270 * time.Millisecond, 405 * time.Millisecond, 607500 * time.Microsecond, 911250 * time.Microsecond}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("waits = %v, want %v", waits, want)
	}
	if ready, list := ls.Status(); !ready || list[0].State != StateBound {
		t.Errorf("after binding: %v %+v", ready, list)
	}
}

func TestVsockRetryCapsAtTwoSecondsAndStopsWithContext(t *testing.T) {
	ls, _ := newTestListeners(t)
	ls.listen = func(Endpoint) (net.Listener, error) { return nil, syscall.ENODEV }
	ctx, cancel := context.WithCancel(context.Background())
	var waits []time.Duration
	done := make(chan struct{})
	ls.bindWait = func(_ context.Context, d time.Duration) bool {
		waits = append(waits, d)
		if len(waits) == 12 {
			cancel()
			close(done)
			return false
		}
		return true
	}
	ep, _ := ParseEndpoint("vsock://:1024")
	if err := ls.Bind(ctx, "control", ep, func(net.Listener) { t.Error("served a listener that never bound") }); err != nil {
		t.Fatal(err)
	}
	<-done
	for i, d := range waits {
		if d > 2*time.Second {
			t.Errorf("wait %d = %v, over the 2s cap", i, d)
		}
	}
	if waits[len(waits)-1] != 2*time.Second {
		t.Errorf("last wait %v, want the 2s cap", waits[len(waits)-1])
	}
}

func TestNoVsockIsSaidOnceAndDoesNotHoldReadiness(t *testing.T) {
	ls, _ := newTestListeners(t)
	calls := 0
	ls.listen = func(ep Endpoint) (net.Listener, error) {
		if ep.Scheme == "vsock" {
			calls++
			return nil, fmt.Errorf("%w: %v", errNoVsock, syscall.EAFNOSUPPORT)
		}
		return net.Listen("tcp", "127.0.0.1:0")
	}
	vs, _ := ParseEndpoint("vsock://:1024")
	tcp, _ := ParseEndpoint("tcp://:0")
	for _, ep := range []Endpoint{vs, tcp} {
		if err := ls.Bind(context.Background(), "control", ep, serveOK(t)); err != nil {
			t.Fatal(err)
		}
	}
	ready, list := ls.Status()
	if !ready || list[0].State != StateUnavailable || list[1].State != StateBound {
		t.Errorf("status = %v %+v, want ready with vsock unavailable", ready, list)
	}
	if calls != 1 {
		t.Errorf("vsock bind tried %d times, want once", calls)
	}
}

// fakeVsockListener hands out connections from the given CIDs.
type fakeVsockListener struct {
	cids []uint32
}

type fakeConn struct {
	net.Conn
	remote net.Addr
	closed *bool
}

func (c fakeConn) RemoteAddr() net.Addr { return c.remote }
func (c fakeConn) Close() error         { *c.closed = true; return nil }

func (l *fakeVsockListener) Accept() (net.Conn, error) {
	if len(l.cids) == 0 {
		return nil, net.ErrClosed
	}
	cid := l.cids[0]
	l.cids = l.cids[1:]
	return fakeConn{remote: &vsock.Addr{ContextID: cid, Port: 5000}, closed: new(bool)}, nil
}
func (l *fakeVsockListener) Close() error   { return nil }
func (l *fakeVsockListener) Addr() net.Addr { return &vsock.Addr{ContextID: 3, Port: 1024} }

func TestCIDFilter(t *testing.T) {
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "refused"})
	f := &cidFilter{Listener: &fakeVsockListener{cids: []uint32{7, 2, 1, 9, 2}}, allowed: map[uint32]bool{2: true, 1: true},
		name: "control", logger: quiet, refused: refused}
	var got []uint32
	for {
		c, err := f.Accept()
		if errors.Is(err, net.ErrClosed) {
			break
		}
		got = append(got, c.RemoteAddr().(*vsock.Addr).ContextID)
	}
	if fmt.Sprint(got) != "[2 1 2]" {
		t.Errorf("accepted CIDs %v, want [2 1 2]", got)
	}
	if n := testutil.ToFloat64(refused); n != 2 {
		t.Errorf("refused count %v, want 2", n)
	}
}

// TestVsockBind binds a real vsock listener where the machine has vsock.
// Loopback vsock connections are not available on the build machine, so the
// bind and the reported address are what can be checked; the VM test
// (make e2e-vm) connects for real.
func TestVsockBind(t *testing.T) {
	testenv.RequireFile(t, "/dev/vsock")
	testenv.RequireRoot(t)
	ls, _ := newTestListeners(t)
	port := uint32(20000 + os.Getpid()%20000)
	ep, _ := ParseEndpoint(fmt.Sprintf("vsock://:%d", port))
	bound := make(chan net.Listener, 1)
	if err := ls.Bind(context.Background(), "control", ep, func(ln net.Listener) { bound <- ln }); err != nil {
		t.Fatal(err)
	}
	select {
	case ln := <-bound:
		defer ln.Close()
		addr, ok := ln.Addr().(*vsock.Addr)
		if !ok || addr.Port != port {
			t.Fatalf("bound %v, want a vsock address on port %d", ln.Addr(), port)
		}
		if _, isFilter := ln.(*cidFilter); !isFilter {
			t.Error("vsock listener is not CID-filtered")
		}
	case <-time.After(10 * time.Second):
		_, list := ls.Status()
		t.Fatalf("vsock never bound: %+v", list)
	}
	if a, ok := ls.Address("control"); !ok || !strings.HasSuffix(a, fmt.Sprintf(":%d", port)) {
		t.Errorf("reported address %q", a)
	}
}

// TestListenPhasesAreKindsNotURLs binds two TCP control listeners, a unix
// Docker listener and a vsock one on a machine without vsock: the startup
// phases are named by listener and scheme, the two TCP ones share theirs,
// no label carries an address, and the vsock listener's refused counter
// is there at zero though nothing was ever refused.
func TestListenPhasesAreKindsNotURLs(t *testing.T) {
	ls, reg := newTestListeners(t)
	real := ls.listen
	ls.listen = func(ep Endpoint) (net.Listener, error) {
		if ep.Scheme == "vsock" {
			return nil, fmt.Errorf("%w: %v", errNoVsock, syscall.EAFNOSUPPORT)
		}
		return real(ep)
	}
	tcp, _ := ParseEndpoint("tcp://:0")
	vs, _ := ParseEndpoint("vsock://:1024")
	sock, _ := ParseEndpoint("unix://" + t.TempDir() + "/docker.sock")
	for _, b := range []struct {
		name string
		ep   Endpoint
	}{{"control", tcp}, {"control", tcp}, {"control", vs}, {"docker", sock}} {
		if err := ls.Bind(context.Background(), b.name, b.ep, serveOK(t)); err != nil {
			t.Fatal(err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	phases := map[string]bool{}
	refused := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "://") || strings.Contains(l.GetValue(), "/") {
					t.Errorf("%s has an address in a label: %s=%q", f.GetName(), l.GetName(), l.GetValue())
				}
				switch {
				case f.GetName() == "arcbox_agent_startup_phase_end_seconds":
					phases[l.GetValue()] = true
				case f.GetName() == "arcbox_agent_vsock_refused_connections_total":
					refused[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	if want := map[string]bool{"listen_control_tcp": true, "listen_docker_unix": true}; fmt.Sprint(phases) != fmt.Sprint(want) {
		t.Errorf("listen phases %v, want %v", phases, want)
	}
	if v, ok := refused["control"]; !ok || v != 0 || len(refused) != 1 {
		t.Errorf("vsock refused counters %v, want control at 0 and no other", refused)
	}
}
