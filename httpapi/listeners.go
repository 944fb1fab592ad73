package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/startup"
)

// Listener states, as /readyz reports them.
const (
	StateBinding     = "binding"
	StateBound       = "bound"
	StateUnavailable = "unavailable"
	StateClosed      = "closed"
)

// The vsock bind back-off: the vsock device may appear after the agent
// starts, so binding is retried from 120 ms, growing 1.5x, up to 2 s apart.
const (
	bindRetryFirst = 120 * time.Millisecond
	bindRetryMax   = 2 * time.Second
)

// ListenerStatus is one listener's state.
type ListenerStatus struct {
	Name    string
	URL     string
	State   string
	Address string
	Error   string
}

// Listeners binds the agent's listeners and keeps their states for /readyz.
type Listeners struct {
	logger  *slog.Logger
	phases  *startup.Phases
	allowed map[uint32]bool
	refused *prometheus.CounterVec
	// Seams for tests: how an endpoint is bound, and how a retry waits.
	listen   func(Endpoint) (net.Listener, error)
	bindWait func(ctx context.Context, d time.Duration) bool

	mu   sync.Mutex
	list []*ListenerStatus
	// phaseBegan is when the first bind of each listen phase began.
	phaseBegan map[string]time.Time
}

// ListenersConfig is what NewListeners needs. AllowCIDs are the vsock peers
// accepted besides the host's CID 2. Unix sockets are 0600, so root alone
// may connect, unless HasSocketGID: then they are 0660 and owned by group
// SocketGID too.
type ListenersConfig struct {
	Logger       *slog.Logger
	Phases       *startup.Phases
	Registerer   prometheus.Registerer
	AllowCIDs    []uint32
	SocketGID    int
	HasSocketGID bool
}

// NewListeners returns an empty set.
func NewListeners(cfg ListenersConfig) *Listeners {
	allowed := map[uint32]bool{HostCID: true}
	for _, c := range cfg.AllowCIDs {
		allowed[c] = true
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "arcbox_agent",
		Name:      "vsock_refused_connections_total",
		Help:      "vsock connections closed because the peer's CID is not allowed.",
	}, []string{"listener"})
	cfg.Registerer.MustRegister(refused)
	gid := NoGroup
	if cfg.HasSocketGID {
		gid = cfg.SocketGID
	}
	return &Listeners{
		logger:     cfg.Logger,
		phases:     cfg.Phases,
		allowed:    allowed,
		refused:    refused,
		listen:     func(ep Endpoint) (net.Listener, error) { return ep.listen(gid) },
		bindWait:   sleepCtx,
		phaseBegan: map[string]time.Time{},
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Bind binds ep under name ("control", "docker") and calls serve with the
// listener once bound. A tcp or unix listener that cannot bind is an error
// now; a vsock listener is retried with back-off in the background until
// ctx ends, unless the machine has no vsock at all, which is said once.
// A vsock listener's refused-connections counter exists, at zero, from
// the call on.
func (s *Listeners) Bind(ctx context.Context, name string, ep Endpoint, serve func(net.Listener)) error {
	st := &ListenerStatus{Name: name, URL: ep.URL, State: StateBinding}
	began := time.Now()
	s.mu.Lock()
	s.list = append(s.list, st)
	if _, ok := s.phaseBegan[listenPhase(name, ep)]; !ok {
		s.phaseBegan[listenPhase(name, ep)] = began
	}
	s.mu.Unlock()
	if ep.Scheme == "vsock" {
		s.refused.WithLabelValues(name)
	}

	ln, err := s.listen(ep)
	if err == nil {
		s.bound(name, ep, st, ln, began, 1, serve)
		return nil
	}
	if ep.Scheme != "vsock" {
		s.setState(st, StateClosed, "", err)
		return err
	}
	if errors.Is(err, errNoVsock) {
		s.setState(st, StateUnavailable, "", err)
		s.logger.Warn("no vsock on this machine; serving the other listeners", "listener", name, "url", ep.URL, "err", err)
		return nil
	}
	s.setState(st, StateBinding, "", err)
	s.logger.Warn("vsock listener not bound yet; retrying with back-off", "listener", name, "url", ep.URL, "err", err)
	go s.retry(ctx, name, ep, st, began, serve)
	return nil
}

func (s *Listeners) retry(ctx context.Context, name string, ep Endpoint, st *ListenerStatus, began time.Time, serve func(net.Listener)) {
	delay := bindRetryFirst
	for attempt := 2; ; attempt++ {
		if !s.bindWait(ctx, delay) {
			s.setState(st, StateClosed, "", ctx.Err())
			return
		}
		ln, err := s.listen(ep)
		if err == nil {
			s.bound(name, ep, st, ln, began, attempt, serve)
			return
		}
		s.setState(st, StateBinding, "", err)
		s.logger.Debug("vsock bind failed", "listener", name, "attempt", attempt, "retry_in", delay, "err", err)
		delay = min(delay*3/2, bindRetryMax)
	}
}

// listenPhase is the startup phase a listener's bind belongs to:
// listen_<name>_<scheme> ("listen_control_vsock", "listen_docker_unix"), a
// fixed word, never an address. Listeners of one name and scheme (two
// TCP control listeners, say) share their phase: it spans from the first
// one's bind to the last one bound, the moment that kind of access was
// all there.
func listenPhase(name string, ep Endpoint) string {
	return "listen_" + name + "_" + ep.Scheme
}

func (s *Listeners) bound(name string, ep Endpoint, st *ListenerStatus, ln net.Listener, began time.Time, attempts int, serve func(net.Listener)) {
	if s.phases != nil {
		// Under the lock, so that the last one bound is the last recorded.
		s.mu.Lock()
		phase := listenPhase(name, ep)
		s.phases.Observe(phase, s.phaseBegan[phase])
		s.mu.Unlock()
	}
	if ep.Scheme == "vsock" {
		ln = &cidFilter{Listener: ln, allowed: s.allowed, name: name, logger: s.logger,
			refused: s.refused.WithLabelValues(name)}
	}
	s.setState(st, StateBound, ln.Addr().String(), nil)
	s.logger.Info("listening", "listener", name, "url", ep.URL, "address", ln.Addr().String(),
		"attempts", attempts, "took", time.Since(began))
	serve(ln)
}

func (s *Listeners) setState(st *ListenerStatus, state, addr string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.State, st.Address, st.Error = state, addr, ""
	if err != nil {
		st.Error = err.Error()
	}
}

// Status returns every listener's state, and whether the set is ready:
// every listener bound, but for those the machine cannot have.
func (s *Listeners) Status() (ready bool, list []ListenerStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ready = len(s.list) > 0
	for _, st := range s.list {
		list = append(list, *st)
		if st.State != StateBound && st.State != StateUnavailable {
			ready = false
		}
	}
	return ready, list
}

// Address returns the bound address of the first listener named name.
func (s *Listeners) Address(name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.list {
		if st.Name == name && st.State == StateBound {
			return st.Address, true
		}
	}
	return "", false
}

// MarkClosed marks every listener closed, as the agent shuts down.
func (s *Listeners) MarkClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.list {
		if st.State == StateBound || st.State == StateBinding {
			st.State = StateClosed
		}
	}
}
