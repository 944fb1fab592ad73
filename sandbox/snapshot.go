package sandbox

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/arcbox/arcbox-agent/sandbox/internal/atomicfile"
)

// Snapshot is a checkpoint of a sandbox: its files and its create request.
// A restore makes a new sandbox from it.
type Snapshot struct {
	ID        string
	SandboxID string // the sandbox it was taken of
	Name      string
	Labels    map[string]string
	Dir       string // where its files are: the sandbox's writable layer, in Dir/layer
	CreatedAt time.Time
}

// CheckpointRequest names and labels a new snapshot.
type CheckpointRequest struct {
	Name   string
	Labels map[string]string
}

// RestoreRequest says how a sandbox restored from a snapshot differs from
// the one the snapshot was taken of.
type RestoreRequest struct {
	ID     string            // the new sandbox's id; empty: generated
	Labels map[string]string // nil: the original's labels
	// NetworkMode, when set, replaces the original's mode. Either way a
	// bridged sandbox gets an address of its own.
	NetworkMode string
	TTL         *time.Duration // nil: the original's TTL; 0: none
}

// SnapshotFilter selects snapshots; every set field must match.
type SnapshotFilter struct {
	SandboxID string
	Labels    map[string]string
}

const (
	snapshotRecordVersion = 1
	snapshotRecordFile    = "snapshot.json"
	maxSnapshotName       = 256
)

// snapshotRecord is what StateDir/snapshots/<id>/snapshot.json holds. It is
// written last, so a directory without it is a checkpoint that never
// finished.
type snapshotRecord struct {
	Version   int               `json:"version"`
	ID        string            `json:"id"`
	SandboxID string            `json:"sandbox_id"`
	Name      string            `json:"name,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	Spec      Spec              `json:"spec"` // the sandbox's request, for restores
}

// snapshotEntry is the manager's state of one snapshot; m.mu guards it.
type snapshotEntry struct {
	rec      snapshotRecord
	dir      string
	restores int  // restores reading it now: a delete waits for none
	deleting bool // a delete is in progress
}

func (e *snapshotEntry) info() Snapshot {
	return Snapshot{
		ID:        e.rec.ID,
		SandboxID: e.rec.SandboxID,
		Name:      e.rec.Name,
		Labels:    maps.Clone(e.rec.Labels),
		Dir:       e.dir,
		CreatedAt: e.rec.CreatedAt,
	}
}

func newSnapshotID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "snap-" + hex.EncodeToString(b[:])
}

// loadSnapshots reads the snapshots an earlier agent took, and clears the
// directories of checkpoints that never finished.
func (m *Manager) loadSnapshots(ctx context.Context) error {
	entries, err := os.ReadDir(m.snapDir)
	if err != nil {
		return Errorf(ErrUnavailable, "read %s: %w", m.snapDir, err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(m.snapDir, e.Name())
		rec, err := readSnapshotRecord(dir)
		if errors.Is(err, fs.ErrNotExist) {
			// The record is written last and removed first: a
			// checkpoint cut short, or a delete.
			m.log.Warn("removing a snapshot directory without a record (a checkpoint or delete cut short)", "dir", dir)
			if err := m.backend.DeleteSnapshot(ctx, dir); err != nil {
				m.log.Error("clear snapshot debris", "dir", dir, "err", err)
			}
			continue
		}
		if err == nil && rec.ID != e.Name() {
			err = fmt.Errorf("its record names snapshot %q", rec.ID)
		}
		if err != nil {
			// Unreadable (a newer agent's, a disk error): kept, not
			// listed, for someone to look at.
			m.log.Error("snapshot not loaded; its files are kept", "dir", dir, "err", err)
			continue
		}
		m.snaps[rec.ID] = &snapshotEntry{rec: rec, dir: dir}
	}
	return nil
}

func readSnapshotRecord(dir string) (snapshotRecord, error) {
	var rec snapshotRecord
	data, err := os.ReadFile(filepath.Join(dir, snapshotRecordFile))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, fmt.Errorf("decode %s: %w", filepath.Join(dir, snapshotRecordFile), err)
	}
	if rec.Version != snapshotRecordVersion {
		return rec, fmt.Errorf("%s: version %d, want %d", filepath.Join(dir, snapshotRecordFile), rec.Version, snapshotRecordVersion)
	}
	return rec, nil
}

// Checkpoint snapshots a ready sandbox: its writable layer (a read-only
// btrfs snapshot when the state directory is on btrfs, else a copy) and
// its request. The sandbox is frozen while its files are captured, so the
// snapshot is consistent even if something in it still writes; no run or
// exec can start meanwhile (ErrConflict). Process state is not captured.
func (m *Manager) Checkpoint(ctx context.Context, id string, req CheckpointRequest) (Snapshot, error) {
	if n := utf8.RuneCountInString(req.Name); n > maxSnapshotName {
		return Snapshot{}, InvalidField("name", "%d characters long; at most %d", n, maxSnapshotName)
	}
	for k := range req.Labels {
		if k == "" {
			return Snapshot{}, InvalidField("labels", "empty key")
		}
	}
	m.mu.Lock()
	sb, err := m.lookupLocked(id)
	if err == nil {
		err = m.checkpointableLocked(sb)
	}
	if err == nil && m.closed {
		err = fmt.Errorf("checkpoint sandbox %q: %w", id, errClosed)
	}
	if err != nil {
		m.mu.Unlock()
		return Snapshot{}, err
	}
	m.wg.Add(1)
	defer m.wg.Done()
	m.mu.Unlock()
	release, err := m.checkpoints.run(ctx)
	if err != nil {
		return Snapshot{}, fmt.Errorf("checkpoint sandbox %q: %w", id, err)
	}
	defer release()

	// opMu keeps a stop or remove from tearing the container down under
	// the checkpoint; the state is checked again once it is held.
	sb.opMu.Lock()
	defer sb.opMu.Unlock()
	m.mu.Lock()
	if err := m.checkpointableLocked(sb); err != nil {
		m.mu.Unlock()
		return Snapshot{}, err
	}
	sb.checkpointing = true
	spec := sb.rec.Spec
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		sb.checkpointing = false
		m.mu.Unlock()
	}()

	started := time.Now()
	rec := snapshotRecord{
		Version:   snapshotRecordVersion,
		ID:        newSnapshotID(),
		SandboxID: id,
		Name:      req.Name,
		Labels:    maps.Clone(req.Labels),
		CreatedAt: m.now(),
		Spec:      spec,
	}
	if len(rec.Labels) == 0 {
		rec.Labels = nil
	}
	dir := filepath.Join(m.snapDir, rec.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return Snapshot{}, fmt.Errorf("checkpoint sandbox %q: %w", id, noSpace(err))
	}
	err = m.backend.Checkpoint(ctx, id, dir)
	if err == nil {
		var data []byte
		if data, err = json.MarshalIndent(rec, "", "  "); err == nil {
			err = atomicfile.WriteFile(filepath.Join(dir, snapshotRecordFile), data, 0o600)
		}
	}
	if err != nil {
		if derr := m.backend.DeleteSnapshot(context.WithoutCancel(ctx), dir); derr != nil {
			m.log.Error("clear a failed checkpoint", "dir", dir, "err", derr)
		}
		return Snapshot{}, fmt.Errorf("checkpoint sandbox %q: %w", id, noSpace(err))
	}
	e := &snapshotEntry{rec: rec, dir: dir}
	m.mu.Lock()
	m.snaps[rec.ID] = e
	m.mu.Unlock()
	m.metrics.checkpointSeconds.Observe(time.Since(started).Seconds())
	m.log.Info("sandbox checkpointed", "id", id, "snapshot", rec.ID, "dir", dir, "took", time.Since(started))
	return e.info(), nil
}

// checkpointableLocked says why sb cannot be checkpointed now, if it
// cannot; m.mu is held.
func (m *Manager) checkpointableLocked(sb *sandbox) error {
	switch {
	case sb.checkpointing:
		return Errorf(ErrConflict, "sandbox %q is being checkpointed already", sb.id)
	case sb.rec.State != StateReady:
		return Errorf(ErrConflict, "sandbox %q is %s; a checkpoint needs it ready", sb.id, sb.rec.State)
	}
	return nil
}

// Snapshots lists the snapshots that match f, oldest first.
func (m *Manager) Snapshots(f SnapshotFilter) []Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []Snapshot{}
	for _, e := range m.snaps {
		if e.deleting || (f.SandboxID != "" && e.rec.SandboxID != f.SandboxID) || !labelsMatch(e.rec.Labels, f.Labels) {
			continue
		}
		out = append(out, e.info())
	}
	slices.SortFunc(out, func(a, b Snapshot) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// GetSnapshot returns one snapshot.
func (m *Manager) GetSnapshot(id string) (Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, err := m.lookupSnapshotLocked(id)
	if err != nil {
		return Snapshot{}, err
	}
	return e.info(), nil
}

// lookupSnapshotLocked finds a snapshot; m.mu is held.
func (m *Manager) lookupSnapshotLocked(id string) (*snapshotEntry, error) {
	e, ok := m.snaps[id]
	if !ok || e.deleting {
		return nil, Errorf(ErrNotFound, "snapshot %q", id)
	}
	return e, nil
}

// DeleteSnapshot deletes a snapshot and its files. Sandboxes restored from
// it are independent of it and stay; a restore in progress from it makes
// the delete a conflict.
func (m *Manager) DeleteSnapshot(ctx context.Context, id string) error {
	m.mu.Lock()
	e, err := m.lookupSnapshotLocked(id)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	if e.restores > 0 {
		m.mu.Unlock()
		return Errorf(ErrConflict, "snapshot %q is being restored; delete it after", id)
	}
	e.deleting = true
	m.mu.Unlock()
	// The record goes first, so a crash half way leaves debris that the
	// next agent clears, never a listed snapshot with missing files.
	if err := os.Remove(filepath.Join(e.dir, snapshotRecordFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.mu.Lock()
		e.deleting = false // untouched: still a whole snapshot
		m.mu.Unlock()
		return fmt.Errorf("delete snapshot %q: %w", id, err)
	}
	err = m.backend.DeleteSnapshot(ctx, e.dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.snaps, id)
	if err != nil {
		// Its record is gone: it is no snapshot any more, and the next
		// agent clears what is left of its files.
		return fmt.Errorf("delete snapshot %q: its files: %w", id, err)
	}
	return nil
}

// ownVolumeMounts gives a restored sandbox mounts of its own volume
// directory where the original mounted the original's (which is not the
// restored sandbox's to mount): a new, empty one, since a snapshot holds
// the writable layer only. id is the new sandbox's; it is generated here
// when one is needed and none was asked.
func (m *Manager) ownVolumeMounts(mounts []Mount, origID string, id *string) []Mount {
	if origID == "" {
		return mounts
	}
	old := filepath.Join(m.cfg.StateDir, "volumes", origID)
	var out []Mount
	for i, mnt := range mounts {
		src := filepath.Clean(mnt.Source)
		if src != old && !strings.HasPrefix(src, old+"/") {
			continue
		}
		if out == nil {
			out = slices.Clone(mounts)
		}
		if *id == "" {
			*id = newID()
		}
		out[i].Source = filepath.Join(m.cfg.StateDir, "volumes", *id, strings.TrimPrefix(src, old))
	}
	if out == nil {
		return mounts
	}
	return out
}

// Restore makes a new sandbox from a snapshot and returns once it is ready:
// it has the snapshot's files (a writable btrfs snapshot of it, or a copy)
// and the original's request but for what req changes; the original's cmd
// is not run again. A restore that fails leaves no sandbox behind.
// Restoring again with the same id and the same outcome returns the
// sandbox made the first time.
func (m *Manager) Restore(ctx context.Context, snapshotID string, req RestoreRequest) (Info, error) {
	if req.ID != "" {
		if err := ValidateID(req.ID); err != nil {
			return Info{}, err
		}
	}
	m.mu.Lock()
	e, err := m.lookupSnapshotLocked(snapshotID)
	if err != nil {
		m.mu.Unlock()
		return Info{}, err
	}
	spec := e.rec.Spec
	m.mu.Unlock()

	origID := spec.ID
	spec.ID = req.ID
	spec.Cmd = nil
	spec.Mounts = m.ownVolumeMounts(spec.Mounts, origID, &spec.ID)
	if req.Labels != nil {
		spec.Labels = req.Labels
	}
	switch req.NetworkMode {
	case "":
	case NetworkNone, NetworkBridge, networkTap:
		spec.NetworkMode = req.NetworkMode
	default:
		return Info{}, InvalidField("network_override.mode", "unknown mode %q; the modes are %q and %q (%q is an alias of %q)",
			req.NetworkMode, NetworkNone, NetworkBridge, networkTap, NetworkBridge)
	}
	if req.TTL != nil {
		spec.TTL = *req.TTL
	}
	spec, err = normalize(spec, m.cfg.DefaultLimits)
	if err != nil {
		return Info{}, err
	}
	if err := m.backend.Validate(spec); err != nil {
		return Info{}, err
	}

	m.mu.Lock()
	if e, err = m.lookupSnapshotLocked(snapshotID); err != nil {
		m.mu.Unlock()
		return Info{}, err
	}
	e.restores++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		e.restores--
		m.mu.Unlock()
	}()

	sb, place, existing, err := m.admit(spec, &restoredFrom{SnapshotID: snapshotID})
	if err != nil {
		return Info{}, fmt.Errorf("restore snapshot %q: %w", snapshotID, err)
	}
	if existing != nil {
		return *existing, nil
	}
	m.mu.Lock()
	startCtx, ok := m.launchLocked(sb)
	m.mu.Unlock()
	if !ok {
		place.cancel()
		return Info{}, fmt.Errorf("restore snapshot %q: %w", snapshotID, errClosed)
	}
	// A client that goes away before the sandbox is ready (while its start
	// waits its turn, say) gets none: the start is called off.
	stopOnGone := context.AfterFunc(ctx, func() {
		m.mu.Lock()
		if sb.startCancel != nil {
			sb.startCancel(errors.New("the client of the restore went away"))
		}
		m.mu.Unlock()
	})
	m.start(startCtx, sb, place) // synchronous: ready at once means ready when we answer
	stopOnGone()

	m.mu.Lock()
	info := m.infoLocked(sb)
	m.mu.Unlock()
	if info.State == StateReady {
		m.metrics.restoreSeconds.Observe(info.ReadyAt.Sub(info.CreatedAt).Seconds())
		return info, nil
	}
	m.mu.Lock()
	startErr := sb.startErr
	m.mu.Unlock()
	m.discard(sb)
	if startErr != nil {
		return Info{}, fmt.Errorf("restore snapshot %q as sandbox %q: %w", snapshotID, sb.id, noSpace(startErr))
	}
	why := info.Error
	if why == "" {
		why = fmt.Sprintf("it is %s", info.State)
	}
	return Info{}, fmt.Errorf("restore snapshot %q as sandbox %q: %s", snapshotID, sb.id, why)
}

// labelsMatch reports whether have has every key of want with its value.
func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}
