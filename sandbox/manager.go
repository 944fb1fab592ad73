package sandbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults.
const (
	// DefaultStopTimeout is how long Stop waits for a workload when given 0.
	DefaultStopTimeout = 30 * time.Second
	// ttlStopTimeout is the grace a workload gets when its sandbox's TTL ends.
	ttlStopTimeout = 10 * time.Second
)

// DefaultLimits are the limits of a sandbox that asks for none, when
// Config.DefaultLimits does not say: 1 vCPU, 512 MiB, 1024 processes.
var DefaultLimits = Limits{VCPUs: 1, MemoryMiB: 512, Pids: 1024}

// DefaultBridgeCIDR is the bridged sandboxes' range when Config.BridgeCIDR
// does not say: the original guest's.
var DefaultBridgeCIDR = netip.MustParsePrefix("172.20.0.0/16")

// Config configures a Manager. Only StateDir is required.
type Config struct {
	// StateDir holds the sandboxes' bundles and records, the image cache
	// and the OCI runtime's state (see the package comment).
	StateDir string
	// Runtime is the OCI runtime: "runc", "crun", a path to either, or ""
	// for the faster one present: crun (about 2.5x faster to create and to
	// exec, see the benchmarks), else runc. On a hybrid cgroup host whose
	// cgroup2 hierarchy has controllers, which crun refuses, "" picks runc.
	Runtime string
	// DefaultRootfs is the root filesystem of sandboxes that name neither
	// an image nor a rootfs; "" is StateDir/rootfs/default. When it does
	// not exist it is made from BusyboxPath (EnsureBusyboxRootfs).
	DefaultRootfs string
	// BusyboxPath is the static busybox the default root filesystem is made
	// from; "" is /bin/busybox.
	BusyboxPath string
	// BridgeCIDR is the range bridged sandboxes get their addresses from;
	// its first address is the gateway, the bridge's own. The zero value
	// is DefaultBridgeCIDR, 172.20.0.0/16.
	BridgeCIDR netip.Prefix
	// Bridge is the host bridge's name; "" is arcbox0.
	Bridge string
	// ResolvConf is the host file whose nameservers (but loopback ones)
	// bridged sandboxes get; "" is /etc/resolv.conf.
	ResolvConf string
	// DefaultLimits fill the limits a create request leaves at zero; its
	// own zero fields are DefaultLimits' (1 vCPU, 512 MiB, 1024 pids).
	DefaultLimits Limits
	// InitPath is the static binary each sandbox runs as its process 1,
	// bind-mounted read-only at /.arcbox/init and run as
	// `/.arcbox/init sandbox-init`: it must then call InitMain. "" is the
	// running executable.
	InitPath string
	// CgroupParent is the cgroup the sandboxes' cgroups are made under, as
	// <CgroupParent>/<id>; "" is "arcbox-<8 hex digits of the state dir's
	// hash>", one per agent instance, so two agents on a machine never
	// share a sandbox's cgroup. A relative path is taken by runc
	// relative to the agent's own cgroup and by crun relative to the root.
	CgroupParent string
	// MountRoots are the host directories whose contents a create may
	// bind-mount (each source must lie under one, resolved without leaving
	// it through a symlink); nil is DefaultMountRoots. Whatever the roots,
	// the agent's sockets, the runtime's, the state dir and the data
	// volume's internals are refused (ForbiddenPaths). Each sandbox may
	// also mount from its own volume directory, StateDir/volumes/<id>.
	MountRoots []string
	// ForbiddenPaths are host paths no mount may reach into or hold, on
	// top of StateDir and the runtime sockets the package knows of: main
	// passes the agent's own sockets and the data volume's mount point.
	ForbiddenPaths []string
	// Registries, when set, are the only registries images may come from
	// (host or host:port, as in an image reference). Unset, any registry
	// may be used but loopback, link-local and unspecified addresses,
	// which are refused unless listed, whatever a name resolves to.
	Registries []string
	// RegistryAuthFile is a Docker config.json ("auths") whose
	// credentials pulls use when a create brings none; "" is none.
	RegistryAuthFile string
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
	// EventBuffer is how many events a subscriber may leave unread before
	// it is cut off; 0 is DefaultEventBuffer.
	EventBuffer int
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
	be        backend
	now       func() time.Time
	afterFunc afterFunc
	metrics   *metrics
	bus       *bus
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
	run         *activeRun              // the workload in progress
	// checkpointing is set while a checkpoint captures the sandbox: no
	// workload may start.
	checkpointing bool
	stopTTL       func() bool // disarms the TTL timer
	removed       bool
}

// NewManager builds the OCI backend and a Manager over it, and re-adopts
// the sandboxes recorded in cfg.StateDir: those whose init still runs come
// back (a run that was in progress is recorded as lost), the others are
// failed with the reason. An error (no runtime binary, say) means the
// sandbox subsystem is unavailable; its text says why.
//
// It marks every file descriptor the agent inherited (past 0-2)
// close-on-exec, so none can reach a runtime or a sandbox.
func NewManager(ctx context.Context, cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	be, err := newOCIBackend(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox backend: %w", err)
	}
	m, err := newManager(ctx, cfg, be, realAfterFunc)
	if err != nil {
		be.Close()
		return nil, err
	}
	return m, nil
}

func (cfg Config) withDefaults() (Config, error) {
	if cfg.StateDir == "" {
		return cfg, fmt.Errorf("sandbox: Config.StateDir is required: %w", ErrUnavailable)
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return cfg, fmt.Errorf("sandbox: state dir: %w", err)
	}
	cfg.StateDir = abs
	if cfg.DefaultRootfs == "" {
		cfg.DefaultRootfs = filepath.Join(cfg.StateDir, "rootfs", "default")
	}
	if cfg.BusyboxPath == "" {
		cfg.BusyboxPath = "/bin/busybox"
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
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = defaultCgroupParent(cfg.StateDir)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

// newManager is NewManager over any backend and timer source.
func newManager(ctx context.Context, cfg Config, be backend, af afterFunc) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	baseCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	closing := make(chan struct{})
	m := &Manager{
		cfg:         cfg,
		log:         cfg.Logger.With("component", "sandbox"),
		be:          be,
		now:         cfg.Now,
		afterFunc:   af,
		metrics:     met,
		bus:         newBus(cfg.EventBuffer, met.eventsDropped.Inc),
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
			return nil, fmt.Errorf("sandbox state dir: %w: %w", err, ErrUnavailable)
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

// readopt loads the records in the state dir and brings each sandbox back.
func (m *Manager) readopt(ctx context.Context) error {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return fmt.Errorf("read %s: %w: %w", m.dir, err, ErrUnavailable)
	}
	var recs []*sandbox
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		id := e.Name()
		dir := filepath.Join(m.dir, id)
		rec, store, err := readRecord(dir)
		if err != nil {
			// A directory without a record is a create that never got
			// far, or debris: nothing refers to it, so clear it.
			m.log.Warn("removing a sandbox directory without a usable record", "id", id, "err", err)
			if ValidateID(id) == nil {
				if err := m.be.Destroy(ctx, id); err != nil {
					m.log.Error("clear sandbox debris", "id", id, "err", err)
					continue
				}
			}
			if err := os.RemoveAll(dir); err != nil {
				m.log.Error("clear sandbox debris", "id", id, "err", err)
			}
			continue
		}
		if rec.Restored != nil && rec.ReadyAt.IsZero() {
			// A restore that never got its sandbox ready (the agent died
			// in it, or in cleaning up after it): a restore leaves a ready
			// sandbox or none, so clear it. Should that fail, it is
			// listed (failed) rather than hidden with its address.
			m.log.Warn("removing a sandbox whose restore did not finish", "id", id, "snapshot", rec.Restored.SnapshotID)
			err := m.be.Destroy(ctx, id)
			if err == nil {
				err = os.RemoveAll(dir)
			}
			if err == nil {
				continue
			}
			m.log.Error("clear a restore that did not finish", "id", id, "err", err)
		}
		if rec.IPAddress != "" {
			if err := m.be.ReserveAddress(id, rec.IPAddress); err != nil {
				// Two records with one address, or a range that changed:
				// the sandbox keeps running but says so.
				m.log.Error("sandbox address not reserved", "id", id, "addr", rec.IPAddress, "err", err)
			}
		}
		recs = append(recs, &sandbox{id: id, dir: dir, rec: rec, store: store})
	}
	slices.SortFunc(recs, func(a, b *sandbox) int {
		return cmp.Or(a.rec.CreatedAt.Compare(b.rec.CreatedAt), cmp.Compare(a.id, b.id))
	})
	for _, sb := range recs {
		m.seq++
		sb.seq = m.seq
		m.boxes[sb.id] = sb
		m.metrics.move("", sb.rec.State)
		m.adopt(ctx, sb)
		m.armTTL(sb)
	}
	return nil
}

// adopt brings back one sandbox recorded by an earlier agent.
func (m *Manager) adopt(ctx context.Context, sb *sandbox) {
	log := m.log.With("id", sb.id)
	switch sb.rec.State {
	case StateStopped, StateFailed:
		return // nothing runs; the files wait for Remove
	case StateStopping:
		// The agent died while stopping it: finish.
		if err := m.be.Stop(ctx, sb.id); err != nil {
			m.fail(sb, fmt.Sprintf("stop interrupted by an agent restart, then: %v", err))
			return
		}
		m.transition(sb, StateStopped, nil)
		m.persistLogged(sb)
		return
	case StateStarting:
		if err := m.be.Stop(ctx, sb.id); err != nil {
			log.Error("release the container of a start cut short", "err", err)
		}
		m.fail(sb, "the agent restarted while the sandbox was starting")
		return
	}
	// ready or running: does its init still run?
	exited, alive, err := m.be.Adopt(ctx, sb.id)
	if err != nil || !alive {
		why := "init exited while the agent was down"
		if err != nil {
			why = fmt.Sprintf("cannot take the container back after an agent restart: %v", err)
		}
		log.Warn("sandbox lost while the agent was down", "reason", why)
		if err := m.be.Stop(ctx, sb.id); err != nil {
			log.Error("release the container of a lost sandbox", "err", err)
		}
		m.fail(sb, why)
		return
	}
	if sb.rec.State == StateRunning {
		// The workload's output went nowhere once the agent died, and its
		// exit cannot be known: record the run as lost and clear what is
		// left of it, so the sandbox is ready for the next one.
		if err := m.be.KillWorkloads(ctx, sb.id); err != nil {
			log.Error("kill the processes of a lost run", "err", err)
		}
		cmd := ""
		if sb.rec.Run != nil {
			cmd = fmt.Sprintf(" (%q)", sb.rec.Run.Cmd)
		}
		note := "last run lost: the agent restarted while it ran" + cmd
		code := ExitLost
		m.mu.Lock()
		sb.rec.Run = nil
		sb.rec.LastExitCode = &code
		sb.rec.LastExitedAt = m.now()
		sb.rec.Error = recordText(note)
		m.transition(sb, StateReady, map[string]string{"exit_code": strconv.Itoa(code), "error": note}, ActionIdle)
		m.mu.Unlock()
		m.persistLogged(sb)
		log.Warn("run lost across an agent restart", "cmd", cmd)
	}
	m.watch(sb, exited)
}

// Create makes a sandbox. It returns promptly in state starting; the start
// goes on in the background, not tied to ctx, and ends in ready (event
// ready) or failed. created is false when a sandbox with this id already
// exists with the same spec; with a different spec the error is ErrConflict.
func (m *Manager) Create(ctx context.Context, s Spec) (info Info, created bool, err error) {
	spec, err := normalize(s, m.cfg.DefaultLimits)
	if err != nil {
		return Info{}, false, err
	}
	if err := m.be.Validate(spec); err != nil {
		return Info{}, false, err
	}
	sb, place, existing, err := m.admit(spec, nil)
	if err != nil {
		return Info{}, false, err
	}
	if existing != nil {
		return *existing, false, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if startCtx, ok := m.launchLocked(sb); ok {
		go m.start(startCtx, sb, place)
	} else {
		place.cancel()
	}
	return m.info(sb), true, nil
}

// admit takes a new sandbox in: it reserves its id (generating one if the
// spec has none) and a place in the starts' queue, writes its first record
// and returns it with its opMu held, for launchLocked, and the place for
// its start. When a sandbox with this id exists, made from the same spec
// and source, it returns that one's Info instead (no new work, so no
// place is needed); made otherwise, ErrConflict. A full queue is ErrBusy.
// The spec is normalized and validated.
func (m *Manager) admit(spec Spec, from *restoredFrom) (*sandbox, *queuePlace, *Info, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, nil, nil, fmt.Errorf("create sandbox: %w", errClosed)
	}
	if spec.ID == "" {
		for spec.ID == "" || m.boxes[spec.ID] != nil {
			spec.ID = newID()
		}
	}
	if sb, ok := m.boxes[spec.ID]; ok {
		defer m.mu.Unlock()
		if specEqual(sb.rec.Spec, spec) && reflect.DeepEqual(sb.rec.Restored, from) {
			info := m.info(sb)
			return nil, nil, &info, nil
		}
		return nil, nil, nil, fmt.Errorf("sandbox %q exists with a different spec: %w", spec.ID, ErrConflict)
	}
	place, err := m.starts.reserve()
	if err != nil {
		m.mu.Unlock()
		return nil, nil, nil, fmt.Errorf("create sandbox %q: %w", spec.ID, err)
	}
	m.seq++
	sb := &sandbox{
		id:  spec.ID,
		dir: filepath.Join(m.dir, spec.ID),
		seq: m.seq,
		rec: record{Spec: spec, State: StateStarting, CreatedAt: m.now(), Restored: from},
	}
	sb.store.dir = sb.dir
	if !spec.Security.HostUsers {
		idmap, err := m.allocIDMapLocked()
		if err != nil {
			m.mu.Unlock()
			place.cancel()
			return nil, nil, nil, fmt.Errorf("create sandbox %q: %w", spec.ID, err)
		}
		sb.rec.IDMap = &idmap
	}
	// Reserve the id, then take an address and make the record durable
	// outside the lock.
	m.boxes[sb.id] = sb
	sb.opMu.Lock() // the start owns the sandbox until it ends
	m.mu.Unlock()

	undo := func() {
		m.mu.Lock()
		delete(m.boxes, sb.id)
		m.mu.Unlock()
		sb.opMu.Unlock()
		place.cancel()
	}
	// The directory first: clearing debris of an earlier sandbox of this
	// id releases what that one held, its address included.
	if err := m.makeDir(sb); err != nil {
		undo()
		return nil, nil, nil, fmt.Errorf("create sandbox %q: its directory: %w", sb.id, storageErr(err))
	}
	addr, gw, err := m.be.Address(sb.id, spec)
	if err != nil {
		undo()
		os.RemoveAll(sb.dir)
		return nil, nil, nil, fmt.Errorf("create sandbox %q: %w", sb.id, err)
	}
	m.mu.Lock() // the sandbox is listed already: Get reads its record
	sb.rec.IPAddress, sb.rec.Gateway = addr, gw
	m.mu.Unlock()
	// The record file is made here with room for every later state, so
	// that a full state dir refuses the create now rather than lose a
	// state the sandbox reaches later (recordStore).
	if err := m.persist(sb); err != nil {
		m.be.ReleaseAddress(sb.id)
		undo()
		os.RemoveAll(sb.dir)
		return nil, nil, nil, fmt.Errorf("create sandbox %q: its record: %w", sb.id, storageErr(err))
	}
	return sb, place, nil, nil
}

// discard removes a sandbox the agent made and does not keep (a restore
// that failed). It waits its turn among the removals but is never
// refused, whatever the queue or a shutdown: a restore leaves a ready
// sandbox or none.
func (m *Manager) discard(sb *sandbox) {
	if release, err := m.removals.turn(m.baseCtx); err == nil {
		defer release()
	}
	if err := m.remove(sb); err != nil {
		m.log.Error("remove a sandbox whose restore failed", "id", sb.id, "err", err)
	}
}

// launchLocked publishes the creation of a sandbox from admit and prepares
// its start: it returns the start's context, the start counted in m.wg, for
// m.start. It returns false, and releases opMu, when the sandbox is not to
// start: the manager closed meanwhile (the record stays; the next agent
// fails it), or a remove came first (it tears down what there is). m.mu is
// held.
func (m *Manager) launchLocked(sb *sandbox) (context.Context, bool) {
	m.metrics.move("", StateStarting)
	m.publish(sb, ActionCreated, nil)
	if m.closed || sb.rec.State != StateStarting {
		sb.opMu.Unlock()
		return nil, false
	}
	startCtx, cancel := context.WithCancelCause(m.baseCtx)
	sb.startCancel = cancel
	m.armTTLLocked(sb)
	m.wg.Add(1)
	return startCtx, true
}

// errClosed is the error of calls made after Close.
var errClosed = fmt.Errorf("%w: %w", ErrManagerClosed, ErrUnavailable)

// specEqual compares two normalized specs: what they make, so not the
// credentials of the image's pull.
func specEqual(a, b Spec) bool {
	a.RegistryAuth, b.RegistryAuth = nil, nil
	return reflect.DeepEqual(a, b)
}

// start makes the container of a new sandbox, when place's turn comes in
// the starts' queue; it owns sb.opMu.
func (m *Manager) start(ctx context.Context, sb *sandbox, place *queuePlace) {
	defer m.wg.Done()
	defer sb.opMu.Unlock()
	defer m.worked()
	from := ""
	if sb.rec.Restored != nil {
		from = filepath.Join(m.snapDir, sb.rec.Restored.SnapshotID)
	}
	var exited <-chan struct{}
	release, err := place.wait(ctx)
	if err == nil {
		var idmap IDMap
		if sb.rec.IDMap != nil {
			idmap = *sb.rec.IDMap
		}
		exited, err = m.be.Start(ctx, sb.id, sb.rec.Spec, idmap, from)
		release()
	}
	m.mu.Lock()
	sb.rec.Spec.RegistryAuth = nil // used by the pull, kept no longer
	m.mu.Unlock()

	cutShort := ctx.Err() != nil // before the cancel below makes it so
	m.mu.Lock()
	if sb.startCancel != nil {
		sb.startCancel(nil)
		sb.startCancel = nil
	}
	if sb.rec.State != StateStarting {
		// A stop or remove came meanwhile; it waits on opMu and tears down.
		m.mu.Unlock()
		return
	}
	if err != nil {
		switch cause := context.Cause(ctx); {
		case cutShort && cause != nil && !errors.Is(cause, context.Canceled):
			err = fmt.Errorf("%w (%w)", err, cause)
		case cutShort, errors.Is(err, ErrManagerClosed):
			err = fmt.Errorf("%w (the agent shut down during the start)", err)
		}
		sb.startErr = err
		m.mu.Unlock()
		m.log.Error("sandbox start failed", "id", sb.id, "err", err)
		m.fail(sb, fmt.Sprintf("start: %v", err))
		return
	}
	sb.rec.ReadyAt = m.now()
	m.transition(sb, StateReady, nil)
	if sb.rec.Restored == nil {
		m.metrics.createToReady.Observe(sb.rec.ReadyAt.Sub(sb.rec.CreatedAt).Seconds())
	}
	var cmdRun *activeRun
	cmd := Process{Cmd: sb.rec.Spec.Cmd}
	if len(cmd.Cmd) > 0 {
		if ar, err := m.beginRunLocked(sb, cmd); err == nil {
			cmdRun = ar
		}
	}
	m.mu.Unlock()
	if err := m.persist(sb); err != nil {
		// The record still says starting, so the next agent would fail
		// the sandbox: it is not ready. (The record file was made with
		// room for every state, so only an I/O error gets here.)
		m.log.Error("record a ready sandbox", "id", sb.id, "err", err)
		if cmdRun != nil {
			m.endRun(sb, cmdRun, nil, err)
		}
		m.fail(sb, fmt.Sprintf("start: its record could not be written: %v", err))
		if err := m.be.Stop(m.baseCtx, sb.id); err != nil {
			m.log.Error("release the container of a failed sandbox", "id", sb.id, "err", err)
		}
		return
	}
	m.watch(sb, exited)
	if cmdRun != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			code, err := m.runWorkload(m.baseCtx, sb, cmdRun, cmd, procIO{out: discardOutput})
			m.log.Info("create command ended", "id", sb.id, "exit_code", code, "err", err)
		}()
	}
}

func discardOutput(Output) error { return nil }

// watch fails the sandbox if its init exits while it should run.
func (m *Manager) watch(sb *sandbox, exited <-chan struct{}) {
	if exited == nil {
		return
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		select {
		case <-m.closing:
			return
		case <-exited:
		}
		m.mu.Lock()
		st := sb.rec.State
		m.mu.Unlock()
		if st != StateReady && st != StateRunning {
			return // being stopped: expected
		}
		sb.opMu.Lock()
		defer sb.opMu.Unlock()
		m.mu.Lock()
		st = sb.rec.State
		m.mu.Unlock()
		if st != StateReady && st != StateRunning {
			return
		}
		m.log.Error("sandbox init exited unexpectedly", "id", sb.id)
		m.fail(sb, "init exited unexpectedly (killed, or out of memory)")
		if err := m.be.Stop(m.baseCtx, sb.id); err != nil {
			m.log.Error("release the container of a failed sandbox", "id", sb.id, "err", err)
		}
	}()
}

// Get returns a sandbox's info.
func (m *Manager) Get(id string) (Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, err := m.lookup(id)
	if err != nil {
		return Info{}, err
	}
	return m.info(sb), nil
}

// List returns the sandboxes that match f, oldest first.
func (m *Manager) List(f Filter) []Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	boxes := slices.Collect(maps.Values(m.boxes))
	slices.SortFunc(boxes, func(a, b *sandbox) int {
		return cmp.Or(a.rec.CreatedAt.Compare(b.rec.CreatedAt), cmp.Compare(a.seq, b.seq))
	})
	out := []Info{}
	for _, sb := range boxes {
		if f.State != "" && sb.rec.State != f.State {
			continue
		}
		if labelsMatch(sb.rec.Spec.Labels, f.Labels) {
			out = append(out, m.info(sb))
		}
	}
	return out
}

// Stop stops a sandbox: a workload in progress gets SIGTERM, then SIGKILL
// once timeout (0: 30 s) has passed, then the sandbox's init is ended and
// its container released; the sandbox ends stopped (failed if the
// teardown fails). Stopping a stopped or failed sandbox changes nothing.
// When ctx ends first Stop returns its error; the stop goes on.
func (m *Manager) Stop(ctx context.Context, id string, timeout time.Duration) (Info, error) {
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	m.mu.Lock()
	sb, err := m.lookup(id)
	if err != nil {
		m.mu.Unlock()
		return Info{}, err
	}
	if m.closed {
		m.mu.Unlock()
		return Info{}, fmt.Errorf("stop sandbox %q: %w", id, errClosed)
	}
	m.wg.Add(1)
	m.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer m.wg.Done()
		done <- m.stop(sb, timeout)
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		return Info{}, fmt.Errorf("stop sandbox %q: %w", id, ctx.Err())
	}
	if err != nil {
		return Info{}, fmt.Errorf("stop sandbox %q: %w", id, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.info(sb), nil
}

// stop takes a sandbox to stopped; grace is the workload's, after SIGTERM.
// The error is that of the stopped state's record: the sandbox is stopped,
// but the next agent would not know it.
func (m *Manager) stop(sb *sandbox, grace time.Duration) error {
	m.mu.Lock()
	ar := sb.run
	switch sb.rec.State {
	case StateStarting, StateReady, StateRunning:
		m.transition(sb, StateStopping, nil)
		if sb.startCancel != nil {
			sb.startCancel(nil)
		}
	}
	m.mu.Unlock()
	m.persistLogged(sb)

	if ar != nil {
		ar.terminate(grace, m.afterFunc)
	}

	sb.opMu.Lock()
	defer sb.opMu.Unlock()
	m.mu.Lock()
	st := sb.rec.State
	m.mu.Unlock()
	if st != StateStopping {
		return nil // stopped by another call meanwhile, or never live
	}
	if ar != nil {
		<-ar.done
	}
	if err := m.be.Stop(m.baseCtx, sb.id); err != nil {
		m.log.Error("stop sandbox", "id", sb.id, "err", err)
		m.fail(sb, fmt.Sprintf("stop: %v", err))
		return nil
	}
	m.mu.Lock()
	m.transition(sb, StateStopped, nil)
	m.mu.Unlock()
	if err := m.persist(sb); err != nil {
		m.log.Error("write sandbox record", "id", sb.id, "err", err)
		return fmt.Errorf("it is stopped, but its record could not be written: %w", err)
	}
	return nil
}

// Remove removes a sandbox and everything it left on the machine: its
// container, mounts, cgroup, processes and files. A live sandbox is stopped
// first (a workload is killed at once); one running a workload needs force,
// else the error is ErrConflict.
func (m *Manager) Remove(ctx context.Context, id string, force bool) error {
	m.mu.Lock()
	sb, err := m.lookup(id)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("remove sandbox %q: %w", id, errClosed)
	}
	if sb.rec.State == StateRunning && !force {
		m.mu.Unlock()
		return fmt.Errorf("sandbox %q is running a workload; stop it or remove with force: %w", id, ErrConflict)
	}
	place, err := m.removals.reserve()
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("remove sandbox %q: %w", id, err)
	}
	m.wg.Add(1)
	m.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer m.wg.Done()
		release, err := place.wait(m.baseCtx)
		if err != nil {
			done <- fmt.Errorf("remove sandbox %q: %w", id, errClosed)
			return
		}
		defer release()
		done <- m.remove(sb)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("remove sandbox %q: %w", id, ctx.Err())
	}
}

func (m *Manager) remove(sb *sandbox) error {
	defer m.worked()
	m.mu.Lock()
	live := sb.rec.State.live()
	m.mu.Unlock()
	if live {
		_ = m.stop(sb, 0) // grace 0: a workload is killed at once; its record goes
	}
	sb.opMu.Lock()
	defer sb.opMu.Unlock()
	m.mu.Lock()
	if sb.removed {
		m.mu.Unlock()
		return nil
	}
	m.mu.Unlock()
	if err := m.be.Destroy(m.baseCtx, sb.id); err != nil {
		return fmt.Errorf("remove sandbox %q: %w", sb.id, err)
	}
	sb.persistMu.Lock()
	err := os.RemoveAll(sb.dir)
	if err == nil {
		m.mu.Lock()
		sb.removed = true
		m.mu.Unlock()
	}
	sb.persistMu.Unlock()
	if err != nil {
		return fmt.Errorf("remove sandbox %q: %w", sb.id, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if sb.stopTTL != nil {
		sb.stopTTL()
	}
	delete(m.boxes, sb.id)
	m.metrics.move(sb.rec.State, "")
	m.publish(sb, ActionRemoved, nil)
	return nil
}

// Subscribe returns a subscription to the events that match f, from now on.
// Close it when done. A subscriber that leaves more than Config.EventBuffer
// events unread is cut off: C closes and Err is ErrSlowSubscriber.
func (m *Manager) Subscribe(f EventFilter) *Subscription {
	return m.bus.subscribe(f)
}

// Close is the agent's shutdown: it disarms the TTL timers, kills the
// workloads in progress (their output has nowhere to go once the agent
// exits; they end with exit code 137), waits for starts and stops in
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
		if sb.run != nil {
			sb.run.kill(ErrManagerClosed)
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
	m.bus.close(ErrManagerClosed)
	if berr := m.be.Close(); berr != nil && err == nil {
		err = berr
	}
	return err
}

// lookup finds a sandbox; m.mu is held.
func (m *Manager) lookup(id string) (*sandbox, error) {
	sb, ok := m.boxes[id]
	if !ok {
		return nil, fmt.Errorf("sandbox %q: %w", id, ErrNotFound)
	}
	return sb, nil
}

// info is a sandbox's Info; m.mu is held.
func (m *Manager) info(sb *sandbox) Info {
	r := sb.rec
	info := Info{
		ID:           sb.id,
		State:        r.State,
		Labels:       maps.Clone(r.Spec.Labels),
		Limits:       r.Spec.Limits,
		NetworkMode:  r.Spec.NetworkMode,
		IPAddress:    r.IPAddress,
		Gateway:      r.Gateway,
		CreatedAt:    r.CreatedAt,
		ReadyAt:      r.ReadyAt,
		LastExitedAt: r.LastExitedAt,
		Error:        r.Error,
		Security: SecurityInfo{
			UserNamespace:   r.IDMap != nil,
			ReadOnlyRootfs:  r.Spec.Security.ReadOnlyRootfs,
			NoNewPrivileges: true,
			Seccomp:         true,
			Capabilities:    DefaultCapabilities(),
		},
	}
	if r.IDMap != nil {
		info.Security.IDMap = *r.IDMap
	}
	if r.LastExitCode != nil {
		code := *r.LastExitCode
		info.LastExitCode = &code
	}
	return info
}

// transition moves sb to state `to`, counts it, and publishes the event
// named after the new state (or action, when given); m.mu is held. An
// invalid transition is a bug: it is logged and refused.
func (m *Manager) transition(sb *sandbox, to State, attrs map[string]string, action ...string) bool {
	from := sb.rec.State
	if err := checkTransition(from, to); err != nil {
		m.log.Error("refused state transition", "id", sb.id, "err", err)
		return false
	}
	sb.rec.State = to
	m.metrics.move(from, to)
	name := string(to)
	if len(action) > 0 {
		name = action[0]
	}
	m.publish(sb, name, attrs)
	return true
}

// publish sends an event about sb; m.mu is held, which keeps the events in
// the order of the transitions.
func (m *Manager) publish(sb *sandbox, action string, attrs map[string]string) {
	m.bus.publish(Event{SandboxID: sb.id, Action: action, Time: m.now(), Attributes: attrs})
}

// fail moves sb to failed with why, and records it.
func (m *Manager) fail(sb *sandbox, why string) {
	m.mu.Lock()
	sb.rec.Error = recordText(why)
	ok := m.transition(sb, StateFailed, map[string]string{"error": sb.rec.Error})
	m.mu.Unlock()
	if ok {
		m.persistLogged(sb)
	}
}

// makeDir makes a new sandbox's directory, clearing what an earlier
// sandbox of the same id left there.
func (m *Manager) makeDir(sb *sandbox) error {
	if err := os.Mkdir(sb.dir, 0o700); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		// Debris of an earlier sandbox of this id: clear it.
		if err := m.be.Destroy(m.baseCtx, sb.id); err != nil {
			return err
		}
		if err := os.RemoveAll(sb.dir); err != nil {
			return err
		}
		if err := os.Mkdir(sb.dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}

// persist writes sb's record as it is now. Writes are ordered, so the last
// state always wins on disk.
func (m *Manager) persist(sb *sandbox) error {
	sb.persistMu.Lock()
	defer sb.persistMu.Unlock()
	m.mu.Lock()
	if sb.removed {
		m.mu.Unlock()
		return nil
	}
	rec := sb.rec.clone()
	m.mu.Unlock()
	return sb.store.write(rec)
}

func (m *Manager) persistLogged(sb *sandbox) {
	if err := m.persist(sb); err != nil {
		m.log.Error("write sandbox record", "id", sb.id, "err", err)
	}
}

// armTTL starts the TTL timer of a re-adopted sandbox.
func (m *Manager) armTTL(sb *sandbox) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.armTTLLocked(sb)
}

// armTTLLocked starts sb's TTL timer; m.mu is held.
func (m *Manager) armTTLLocked(sb *sandbox) {
	ttl := sb.rec.Spec.TTL
	if ttl <= 0 || sb.stopTTL != nil {
		return
	}
	left := max(sb.rec.CreatedAt.Add(ttl).Sub(m.now()), 0)
	sb.stopTTL = m.afterFunc(left, func() { m.expire(sb) })
}

// expire stops and removes a sandbox whose TTL has passed.
func (m *Manager) expire(sb *sandbox) {
	m.mu.Lock()
	if m.closed || sb.removed {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()
	m.log.Info("sandbox TTL expired", "id", sb.id, "ttl", sb.rec.Spec.TTL)
	m.mu.Lock()
	live := sb.rec.State.live()
	m.mu.Unlock()
	if live {
		_ = m.stop(sb, ttlStopTimeout) // logged; the remove below clears the record
	}
	release, err := m.removals.turn(m.baseCtx)
	if err != nil {
		return // the agent is shutting down; the next one expires it
	}
	defer release()
	if err := m.remove(sb); err != nil {
		m.log.Error("remove expired sandbox", "id", sb.id, "err", err)
	}
}
