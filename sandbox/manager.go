package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/arcbox/arcbox-agent/events"
	"github.com/arcbox/arcbox-agent/sandbox/network"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultLimits are the limits of a sandbox that asks for none, when
// Config.DefaultLimits does not say: 1 vCPU, 512 MiB, 1024 processes.
var DefaultLimits = Limits{VCPUs: 1, MemoryMiB: 512, Pids: 1024}

// DefaultBridgeCIDR is the bridged sandboxes' range when Config.BridgeCIDR
// does not say: the original guest's.
var DefaultBridgeCIDR = netip.MustParsePrefix("172.20.0.0/16")

// Config configures a Manager. Only StateDir is required.
type Config struct {
	// StateDir holds the sandboxes' records and snapshots, and the
	// backend's files beside them (see the package comment).
	StateDir string
	// IDRangeDir is where this machine's agents claim the id ranges of
	// their sandboxes' user namespaces, so that two agents never hand out
	// the same one; "" is DefaultIDRangeDir.
	IDRangeDir string
	// BridgeCIDR is the range bridged sandboxes get their addresses from
	// (the Manager's pool; the backend sets up what it is given); its first
	// address is the gateway, the bridge's own. The zero value is
	// DefaultBridgeCIDR, 172.20.0.0/16.
	BridgeCIDR netip.Prefix
	// DefaultLimits fill the limits a create request leaves at zero; its
	// own zero fields are DefaultLimits' (1 vCPU, 512 MiB, 1024 pids).
	DefaultLimits Limits
	// Workers is how many container starts (creates and restores), how
	// many removals, and how many checkpoints run at once; 0 is 4 (2 for
	// checkpoints). QueueDepth is how many more of each may wait their
	// turn, past which they are refused with ErrBusy; 0 is 64 (16 for
	// checkpoints). See workQueue.
	Workers    int
	QueueDepth int
	// OnIdle, when set, is called once the manager has been quiet for
	// idleAfter after a burst of work (starts, removals, runs, snapshots):
	// main hands the memory a burst used back to the system then, rather
	// than keep it until the runtime's next forced collection minutes
	// later.
	OnIdle func()
	// MaxRuns is how many runs a sandbox may have in progress at once,
	// past which a run is refused (ErrConflict); 0 is DefaultMaxRuns, 64.
	MaxRuns int
	// RunOutputBytes is how much of each run's output is kept for
	// ReadRunOutput, the oldest bytes dropped past it; 0 is
	// DefaultRunOutputBytes, 8 MiB. The ended runs of a sandbox keep at
	// most four times that together.
	RunOutputBytes int64
	// HangupGrace is how long a process whose client hung up has, after
	// SIGHUP, before SIGKILL; 0 is DefaultHangupGrace, 2 s.
	HangupGrace time.Duration
	// Events is the journal the manager's events go to (the agent's one
	// journal, which the HTTP layer serves); nil: a journal of its own in
	// memory, which Close closes.
	Events *events.Journal
	// Logger logs; nil discards.
	Logger *slog.Logger
	// Registerer takes the metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// Manager owns the sandboxes: their states, events, TTLs and records. It is
// safe for concurrent use.
type Manager struct {
	cfg       Config
	log       *slog.Logger
	backend   Backend
	addrs     *network.Pool // the bridged sandboxes' addresses
	now       func() time.Time
	afterFunc afterFunc
	metrics   *metrics
	events    *events.Journal
	ownEvents bool   // made by the manager, closed by Close
	dir       string // StateDir/sandboxes
	snapDir   string // StateDir/snapshots

	// The bounds of the heavy operations (workQueue).
	starts, removals, checkpoints *workQueue

	baseCtx    context.Context // background work; cancelled by Close
	cancelBase context.CancelFunc
	closing    chan struct{} // closed by Close: watchers end

	idleMu   sync.Mutex  // guards idleStop and cfg.OnIdle
	idleStop func() bool // disarms the OnIdle timer

	mu    sync.Mutex
	boxes map[string]*sandbox
	// idSlot is the id range given last (allocIDMapLocked).
	idSlot    uint32
	idSlotSet bool
	snaps     map[string]*snapshotEntry
	seq       uint64
	closed    bool
	wg        sync.WaitGroup // background goroutines
}

// sandbox is the manager's state of one sandbox; m.mu guards its fields
// but opMu and persistMu.
type sandbox struct {
	id  string
	dir string
	seq uint64
	rec record

	// opMu serializes lifecycle operations: start, stop, remove.
	opMu sync.Mutex
	// persistMu orders record writes, and record writes with removal;
	// it guards store.
	persistMu sync.Mutex
	store     recordStore

	startCancel context.CancelCauseFunc // cancels the start in progress
	startErr    error                   // why the start failed, if it did
	runs        runTable                // its runs, in progress and ended
	// checkpointing is set while a checkpoint captures the sandbox: no
	// workload may start.
	checkpointing bool
	stopTTL       func() bool // disarms the TTL timer
	removed       bool
}

// NewManager returns a Manager over backend, and re-adopts the sandboxes
// recorded in cfg.StateDir: those whose init still runs come back (a run
// that was in progress is recorded as lost), the others are failed with
// the reason. The Manager owns backend from then on: Close closes it, and
// so does a NewManager that fails.
func NewManager(ctx context.Context, cfg Config, backend Backend) (*Manager, error) {
	m, err := newManager(ctx, cfg, backend, realAfterFunc)
	if err != nil {
		backend.Close()
		return nil, err
	}
	return m, nil
}

func (cfg Config) withDefaults() (Config, error) {
	if cfg.StateDir == "" {
		return cfg, Errorf(ErrUnavailable, "sandbox: Config.StateDir is required")
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return cfg, fmt.Errorf("sandbox: state dir: %w", err)
	}
	cfg.StateDir = abs
	if cfg.IDRangeDir == "" {
		cfg.IDRangeDir = DefaultIDRangeDir
	}
	if cfg.DefaultLimits.VCPUs <= 0 {
		cfg.DefaultLimits.VCPUs = DefaultLimits.VCPUs
	}
	if cfg.DefaultLimits.Pids <= 0 {
		cfg.DefaultLimits.Pids = DefaultLimits.Pids
	}
	if cfg.DefaultLimits.MemoryMiB <= 0 {
		cfg.DefaultLimits.MemoryMiB = DefaultLimits.MemoryMiB
	}
	if !cfg.BridgeCIDR.IsValid() {
		cfg.BridgeCIDR = DefaultBridgeCIDR
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 64
	}
	if cfg.MaxRuns <= 0 {
		cfg.MaxRuns = DefaultMaxRuns
	}
	if cfg.RunOutputBytes <= 0 {
		cfg.RunOutputBytes = DefaultRunOutputBytes
	}
	if cfg.HangupGrace <= 0 {
		cfg.HangupGrace = DefaultHangupGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

// newManager is NewManager over any timer source.
func newManager(ctx context.Context, cfg Config, backend Backend, afterFunc afterFunc) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	addrs, err := network.NewPool(cfg.BridgeCIDR)
	if err != nil {
		return nil, Errorf(ErrUnavailable, "sandbox: Config.BridgeCIDR: %w", err)
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	ownEvents := cfg.Events == nil
	if ownEvents {
		if cfg.Events, err = events.Open(events.Config{Logger: cfg.Logger, Now: cfg.Now}); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.IDRangeDir, 0o755); err != nil {
		// Sandboxes with a user namespace are refused (503) saying so;
		// the others, and the rest of the manager, work.
		cfg.Logger.Error("the id range claims directory cannot be made", "dir", cfg.IDRangeDir, "err", err)
	}
	baseCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	closing := make(chan struct{})
	m := &Manager{
		cfg:         cfg,
		log:         cfg.Logger.With("component", "sandbox"),
		backend:     backend,
		addrs:       addrs,
		now:         cfg.Now,
		afterFunc:   afterFunc,
		metrics:     met,
		events:      cfg.Events,
		ownEvents:   ownEvents,
		dir:         filepath.Join(cfg.StateDir, "sandboxes"),
		snapDir:     filepath.Join(cfg.StateDir, "snapshots"),
		starts:      newWorkQueue("sandbox starts", cfg.Workers, cfg.QueueDepth, closing),
		removals:    newWorkQueue("sandbox removals", cfg.Workers, cfg.QueueDepth, closing),
		checkpoints: newWorkQueue("checkpoints", cfg.Workers/2, cfg.QueueDepth/4, closing),
		baseCtx:     baseCtx,
		cancelBase:  cancel,
		closing:     closing,
		boxes:       map[string]*sandbox{},
		snaps:       map[string]*snapshotEntry{},
	}
	for _, dir := range []string{m.dir, m.snapDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			cancel()
			return nil, Errorf(ErrUnavailable, "sandbox state dir: %w", err)
		}
	}
	if err := m.readopt(ctx); err != nil {
		cancel()
		return nil, err
	}
	if err := m.loadSnapshots(ctx); err != nil {
		cancel()
		return nil, err
	}
	return m, nil
}

// errClosed is the error of calls made after Close.
var errClosed = Classify(ErrUnavailable, ErrManagerClosed)

// idleAfter is how long the manager is quiet before Config.OnIdle.
const idleAfter = 5 * time.Second

// worked notes that a piece of work ended: Config.OnIdle is called once
// nothing else ends for idleAfter.
func (m *Manager) worked() {
	m.idleMu.Lock()
	defer m.idleMu.Unlock()
	if m.cfg.OnIdle == nil {
		return
	}
	if m.idleStop != nil {
		m.idleStop()
	}
	m.idleStop = m.afterFunc(idleAfter, m.cfg.OnIdle)
}

// afterFunc calls f after d, unless stop is called first (time.AfterFunc).
type afterFunc func(d time.Duration, f func()) (stop func() bool)

func realAfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// Events is the journal the manager's events go to.
func (m *Manager) Events() *events.Journal { return m.events }

// Close is the agent's shutdown: it disarms the TTL timers, kills the
// runs in progress, detached ones too (their output has nowhere to go
// once the agent exits, and is kept in its memory; they end with exit
// code 137), waits for starts and stops in
// progress (until ctx ends, then cancels them), ends the subscriptions
// (ErrManagerClosed) and releases the backend. The sandboxes keep running
// and a later NewManager on the same StateDir re-adopts them.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	for _, sb := range m.boxes {
		if sb.stopTTL != nil {
			sb.stopTTL()
		}
		for _, r := range sb.runs.running() {
			r.kill(ErrManagerClosed)
		}
	}
	close(m.closing)
	m.mu.Unlock()
	m.idleMu.Lock()
	if m.idleStop != nil {
		m.idleStop()
	}
	m.cfg.OnIdle = nil // no more after Close
	m.idleMu.Unlock()

	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("close sandbox manager: %w", ctx.Err())
		m.cancelBase()
		<-done
	}
	m.cancelBase()
	if m.ownEvents {
		_ = m.events.Close()
	}
	if berr := m.backend.Close(); berr != nil && err == nil {
		err = berr
	}
	return err
}
