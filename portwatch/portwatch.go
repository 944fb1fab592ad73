// Package portwatch reports TCP and UDP listeners as they appear and go,
// in the guest's own network namespace and in each bridged sandbox's, so
// the host can forward a port as soon as something listens on it.
//
// It polls, for the kernel tells no one of a new listener. Every Interval
// (50 ms) it reads each namespace's socket counters (sockstat), which move
// when a socket enters or leaves the kernel's listening or UDP hash, and
// where they moved it asks the kernel for the namespace's listeners
// (sock_diag netlink, one socket per namespace, made inside it and
// reused) and compares them with the last answer. A dump walks whole
// kernel hash tables (16384 buckets each on a guest of a few GiB), about
// 100 µs once they are out of the cache; reading the counters costs a
// quarter of that. So a listener is reported within Interval (and the
// scan's own time) of its listen(2) or bind(2), at a small cost for an
// idle namespace.
//
// Counters can cancel out: a listener that opens in the same Interval as
// another socket of its protocol closes in its namespace, with nothing
// moving after, or a bound UDP socket that connects or disconnects
// (which moves no counter), is seen by the dump every namespace gets each
// Recheck (1 s) whatever its counters say.
//
// A listener is a (protocol, address, port) in one namespace: several
// sockets sharing it with SO_REUSEPORT are one listener. TCP counts a
// socket in LISTEN. UDP counts a socket bound to a port and not connected:
// it takes datagrams from anyone, which is what a UDP server is. That
// includes a client's socket that sent with sendto(2) before any bind and
// so got an ephemeral port; the kernel does not tell it apart. A
// connected UDP socket (most DNS clients') is not a listener.
//
// Sandboxes are found as the bind-mounted namespace files in NetnsDir
// (one per sandbox id, as sandbox/network makes them). A sandbox with
// `network: none` has no such file, and its listeners are reachable from
// nowhere, so it is not watched.
package portwatch

import (
	"cmp"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Listener is a TCP or UDP listening address in one network namespace.
type Listener struct {
	Protocol string     // TCP or UDP
	Address  netip.Addr // the bound address, without a zone: the unspecified one (0.0.0.0 or ::) for any
	Port     uint16
	Sandbox  string // the sandbox's id; "" for the guest
}

// Config configures a Watcher. Only OnOpen and OnClose are needed to hear
// anything; every field may be left zero.
type Config struct {
	// NetnsDir holds the sandboxes' network namespaces, bind-mounted at
	// NetnsDir/<sandbox id>. "" watches the guest alone. The directory
	// need not exist yet: it is looked for every scan until it does.
	NetnsDir string
	// Interval is the poll period, 50 ms if zero: a listener is reported
	// at most Interval plus one scan after it appears.
	Interval time.Duration
	// Recheck is how often each namespace is dumped whether or not its
	// counters moved (see the package comment), 1 s if zero. A negative
	// Recheck dumps every namespace every scan: a listener is never seen
	// late, at three to four times the idle cost per namespace.
	Recheck time.Duration
	// OnOpen and OnClose are called from Run's goroutine, one at a time,
	// in the order the changes were seen; they must not block, or later
	// changes wait for them.
	OnOpen, OnClose func(Listener)
	Logger          *slog.Logger
}

// Defaults of a Config's periods.
const (
	DefaultInterval = 50 * time.Millisecond
	DefaultRecheck  = time.Second
)

// dumper reads the listeners of one namespace.
type dumper interface {
	// dump appends the listeners in its namespace to dst, in any order
	// and with duplicates; Sandbox is left empty. Unless force is set, a
	// dumper that can tell nothing changed since its last dump may skip
	// it and return dst as it was and fresh false.
	dump(dst []Listener, force bool) (out []Listener, fresh bool, err error)
	close()
}

// source is the watcher's seam to the kernel: the guest's namespace, and
// the sandboxes' as they come and go.
type source interface {
	// guest returns the dumper of the guest's own namespace.
	guest() (dumper, error)
	// sync calls appeared for each sandbox namespace ready since the last
	// call, and went for each one gone (or replaced: went, then appeared,
	// with the same id). An error says the sandboxes could not be looked
	// for at all this time; sync is called again next scan.
	sync(appeared func(id string, d dumper), went func(id string)) error
	close()
}

// Watcher watches the listeners of the guest and of the sandboxes. Build
// it with New; Run does the watching.
type Watcher struct {
	cfg    Config
	log    *slog.Logger
	newSrc func(Config, *slog.Logger) (source, error)

	// Run's goroutine alone changes ns; it holds mu while it does, so
	// Listeners can read ns under mu.
	mu sync.Mutex
	ns map[string]*namespace

	recheckEvery uint64 // scans between dumps a namespace gets whatever its counters say
	scans        uint64 // scans so far
	made         uint64 // namespaces watched so far, to spread their forced dumps
	syncFailing  bool   // the last sync failed, and it was logged

	// appearedFn and wentFn are appeared and went as func values made once:
	// a method value made every scan would allocate every scan.
	appearedFn func(string, dumper)
	wentFn     func(string)
}

// namespace is one watched network namespace and what was last seen in it.
type namespace struct {
	id      string
	d       dumper
	phase   uint64     // the scans at which it is forced to dump: scans%recheckEvery == phase
	cur     []Listener // sorted, no duplicates: the listeners reported open
	next    []Listener // the scan being read; reused every scan
	dumped  bool       // a dump has succeeded: cur is the namespace's
	failing bool       // the last dump failed, and it was logged
}

// New returns a watcher of cfg; Run starts it.
func New(cfg Config) *Watcher {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Recheck == 0 {
		cfg.Recheck = DefaultRecheck
	}
	recheckEvery := uint64(1)
	if cfg.Recheck > cfg.Interval {
		recheckEvery = uint64(cfg.Recheck / cfg.Interval)
	}
	if cfg.OnOpen == nil {
		cfg.OnOpen = func(Listener) {}
	}
	if cfg.OnClose == nil {
		cfg.OnClose = func(Listener) {}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		cfg:          cfg,
		log:          log.With("component", "portwatch"),
		newSrc:       newKernelSource,
		ns:           map[string]*namespace{},
		recheckEvery: recheckEvery,
	}
	w.appearedFn, w.wentFn = w.appeared, w.went
	return w
}

// Run watches until ctx ends, then reports nothing more and returns nil.
// The guest's namespace is the one Run is called in. Its first scan
// reports every listener already there as opened, so a
// consumer that starts from an empty set ends up with the true one; a
// listener still open when Run returns gets no close. A sandbox whose
// namespace goes away has all its listeners reported closed. Run fails
// only if the guest's namespace cannot be read at all; call it once.
func (w *Watcher) Run(ctx context.Context) error {
	src, err := w.newSrc(w.cfg, w.log)
	if err != nil {
		return err
	}
	if err := w.start(src); err != nil {
		src.close()
		return err
	}
	defer w.stop(src)
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		w.scan(src)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// start opens the guest's namespace, which Run cannot do without.
func (w *Watcher) start(src source) error {
	g, err := src.guest()
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.ns[""] = w.newNamespace("", g)
	w.mu.Unlock()
	return nil
}

// stop closes every namespace's socket and the source, silently: Run is
// over, and the listeners have not closed.
func (w *Watcher) stop(src source) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, ns := range w.ns {
		ns.d.close()
		delete(w.ns, id)
	}
	src.close()
}

// Listeners returns the listeners Run has reported open and not closed,
// the guest's first, then each sandbox's by id, each sorted by protocol,
// address and port.
func (w *Watcher) Listeners() []Listener {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []Listener
	for _, ns := range w.ns {
		out = append(out, ns.cur...)
	}
	slices.SortFunc(out, compareListeners)
	return out
}

// scan brings every namespace up to date and reports what changed.
func (w *Watcher) scan(src source) {
	err := src.sync(w.appearedFn, w.wentFn)
	switch {
	case err != nil && !w.syncFailing:
		w.log.Warn("cannot look for sandbox namespaces; retrying every scan", "dir", w.cfg.NetnsDir, "err", err)
		w.syncFailing = true
	case err == nil && w.syncFailing:
		w.log.Info("looking for sandbox namespaces again", "dir", w.cfg.NetnsDir)
		w.syncFailing = false
	}
	for _, ns := range w.ns {
		w.scanNamespace(ns)
	}
	w.scans++
}

// scanNamespace dumps one namespace and reports the difference from the
// last dump. A failed dump changes nothing: the listeners stay as they
// were until a dump succeeds.
func (w *Watcher) scanNamespace(ns *namespace) {
	force := !ns.dumped || ns.failing || w.scans%w.recheckEvery == ns.phase
	next, fresh, err := ns.d.dump(ns.next[:0], force)
	ns.next = next
	if err != nil {
		if !ns.failing {
			w.log.Warn("cannot read listeners; retrying every scan", "sandbox", ns.id, "err", err)
			ns.failing = true
		}
		return
	}
	if ns.failing {
		w.log.Info("reading listeners again", "sandbox", ns.id)
		ns.failing = false
	}
	if !fresh {
		return
	}
	ns.dumped = true
	for i := range ns.next {
		ns.next[i].Sandbox = ns.id
	}
	slices.SortFunc(ns.next, compareListeners)
	ns.next = slices.Compact(ns.next)
	if slices.Equal(ns.cur, ns.next) {
		return
	}
	w.report(ns.cur, ns.next)
	w.mu.Lock()
	ns.cur, ns.next = ns.next, ns.cur
	w.mu.Unlock()
}

// report calls OnClose for each listener of old that is not in cur, then
// OnOpen for each of cur not in old; both are sorted without duplicates.
func (w *Watcher) report(old, cur []Listener) {
	eachMissing(old, cur, w.cfg.OnClose)
	eachMissing(cur, old, w.cfg.OnOpen)
}

// eachMissing calls f for each listener of a that b lacks; both are sorted
// by compareListeners without duplicates.
func eachMissing(a, b []Listener, f func(Listener)) {
	j := 0
	for _, l := range a {
		for j < len(b) && compareListeners(b[j], l) < 0 {
			j++
		}
		if j < len(b) && b[j] == l {
			continue
		}
		f(l)
	}
}

// appeared starts watching sandbox id's namespace; its first scan reports
// its listeners open.
func (w *Watcher) appeared(id string, d dumper) {
	w.mu.Lock()
	old := w.ns[id]
	w.ns[id] = w.newNamespace(id, d)
	w.mu.Unlock()
	if old != nil { // a source calls went first; never leak a socket if not
		w.closeNamespace(old)
	}
	w.log.Debug("watching sandbox namespace", "sandbox", id)
}

// went reports every listener of sandbox id's namespace closed and stops
// watching it.
func (w *Watcher) went(id string) {
	w.mu.Lock()
	ns := w.ns[id]
	if ns == nil || id == "" {
		w.mu.Unlock()
		return
	}
	delete(w.ns, id)
	w.mu.Unlock()
	w.closeNamespace(ns)
	w.log.Debug("sandbox namespace gone", "sandbox", id)
}

// closeNamespace reports ns's listeners closed and closes its socket, which
// would otherwise keep the namespace alive.
func (w *Watcher) closeNamespace(ns *namespace) {
	for _, l := range ns.cur {
		w.cfg.OnClose(l)
	}
	ns.d.close()
}

// newNamespace starts the state of a namespace read by d. Its forced
// dumps fall on other scans than those of the namespaces before it, so
// that they spread over the scans rather than come all at once.
func (w *Watcher) newNamespace(id string, d dumper) *namespace {
	ns := &namespace{id: id, d: d, phase: w.made % w.recheckEvery}
	w.made++
	return ns
}

// compareListeners orders listeners by sandbox, protocol, address and port.
func compareListeners(a, b Listener) int {
	if c := cmp.Compare(a.Sandbox, b.Sandbox); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	if c := a.Address.Compare(b.Address); c != 0 {
		return c
	}
	return cmp.Compare(a.Port, b.Port)
}
