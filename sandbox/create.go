package sandbox

// Creating a sandbox: Create admits it (its id, its place in the starts'
// queue, its address and its first record), then start makes its
// container in the background and watch fails it if its init dies.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
)

// Create makes a sandbox. It returns promptly in state starting; the start
// goes on in the background, not tied to ctx, and ends in ready (event
// ready) or failed. created is false when a sandbox with this id already
// exists with the same spec; with a different spec the error is ErrConflict.
func (m *Manager) Create(ctx context.Context, s Spec) (info Info, created bool, err error) {
	spec, err := normalize(s, m.cfg.DefaultLimits)
	if err != nil {
		return Info{}, false, err
	}
	if err := m.backend.Validate(spec); err != nil {
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
	return m.infoLocked(sb), true, nil
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
			info := m.infoLocked(sb)
			return nil, nil, &info, nil
		}
		return nil, nil, nil, Errorf(ErrConflict, "sandbox %q exists with a different spec", spec.ID)
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
		if sb.rec.IDMap != nil {
			m.releaseRange(sb.rec.IDMap.HostID)
		}
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
	addr, gw, err := m.allocAddress(sb.id, spec)
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
		m.addrs.Release(sb.id)
		undo()
		os.RemoveAll(sb.dir)
		return nil, nil, nil, fmt.Errorf("create sandbox %q: its record: %w", sb.id, storageErr(err))
	}
	return sb, place, nil, nil
}

// launchLocked publishes the creation of a sandbox from admit and prepares
// its start: it returns the start's context, the start counted in m.wg, for
// m.start. It returns false, and releases opMu, when the sandbox is not to
// start: the manager closed meanwhile (the record stays; the next agent
// fails it), or a remove came first (it tears down what there is). m.mu is
// held.
func (m *Manager) launchLocked(sb *sandbox) (context.Context, bool) {
	m.metrics.move("", StateStarting)
	m.publishLocked(sb, ActionCreated, nil)
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
		r := StartRequest{ID: sb.id, Spec: sb.rec.Spec, From: from, Progress: m.pullProgress(sb)}
		if sb.rec.IDMap != nil {
			r.IDMap = *sb.rec.IDMap
		}
		m.mu.Lock()
		r.NextIDMap = m.nextIDMapLocked()
		m.mu.Unlock()
		r.Address, _ = netip.ParseAddr(sb.rec.IPAddress) // "" (no network): the zero Addr
		exited, err = m.backend.Start(ctx, r)
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
	m.transitionLocked(sb, StateReady, nil)
	if sb.rec.Restored == nil {
		m.metrics.createToReady.Observe(sb.rec.ReadyAt.Sub(sb.rec.CreatedAt).Seconds())
	}
	// The create request's cmd is a detached run: no client waits on it,
	// and it is listed and read by id (Runs, ReadRunOutput) as one.
	var cmdRun *activeRun
	cmd := Process{Cmd: sb.rec.Spec.Cmd, DetachOnDisconnect: true}
	if len(cmd.Cmd) > 0 {
		if run, err := m.beginRunLocked(sb, cmd); err == nil {
			cmdRun = run
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
		if err := m.backend.Stop(m.baseCtx, sb.id); err != nil {
			m.log.Error("release the container of a failed sandbox", "id", sb.id, "err", err)
		}
		return
	}
	m.watch(sb, exited)
	if cmdRun != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			code, err := m.runWorkload(m.baseCtx, sb, cmdRun, cmd, processIO{out: discardOutput})
			m.log.Info("create command ended", "id", sb.id, "exit_code", code, "err", err)
		}()
	}
}

func discardOutput(Output) error { return nil }

// pullProgress publishes the progress of the pull of sb's image as
// image.pull events, for StartRequest.Progress.
func (m *Manager) pullProgress(sb *sandbox) func(PullProgress) {
	image := sb.rec.Spec.Image
	return func(p PullProgress) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.publishLocked(sb, ActionImagePull, map[string]string{
			"image": image, "layer": p.Layer,
			"done": strconv.FormatInt(p.Done, 10), "total": strconv.FormatInt(p.Total, 10),
		})
	}
}

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
		if err := m.backend.Stop(m.baseCtx, sb.id); err != nil {
			m.log.Error("release the container of a failed sandbox", "id", sb.id, "err", err)
		}
	}()
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

// makeDir makes a new sandbox's directory, clearing what an earlier
// sandbox of the same id left there.
func (m *Manager) makeDir(sb *sandbox) error {
	if err := os.Mkdir(sb.dir, 0o700); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		// Debris of an earlier sandbox of this id: clear it.
		if err := m.destroy(m.baseCtx, sb.id); err != nil {
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
