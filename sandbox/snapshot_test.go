package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
)

func TestCheckpointAndRestore(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.createReady(Spec{ID: "orig", Labels: map[string]string{"team": "a"}, Cmd: []string{"echo", "once"}, TTL: time.Hour})
	h.expect("orig", ActionIdle)

	snap, err := h.m.Checkpoint(ctx, "orig", CheckpointRequest{Name: "before", Labels: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(snap.ID, "snap-") || snap.SandboxID != "orig" || snap.Name != "before" || snap.Dir != filepath.Join(h.dir, "snapshots", snap.ID) {
		t.Errorf("snapshot %+v", snap)
	}
	if _, err := os.Stat(filepath.Join(snap.Dir, snapshotRecordFile)); err != nil {
		t.Errorf("no record: %v", err)
	}

	// Restored: ready when Restore returns, from the snapshot, with the
	// original's request but the cmd, and what the request changes.
	info, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	if info.State != StateReady || info.ID != "copy" || info.Labels["team"] != "a" {
		t.Errorf("restored %+v", info)
	}
	h.expect("copy", ActionCreated, ActionReady)
	h.backend.mu.Lock()
	from := h.backend.startedFrom["copy"]
	h.backend.mu.Unlock()
	if from != snap.Dir {
		t.Errorf("started from %q, want %q", from, snap.Dir)
	}
	h.m.mu.Lock()
	rec := h.m.boxes["copy"].rec
	h.m.mu.Unlock()
	if rec.Spec.Cmd != nil || rec.Spec.TTL != time.Hour || rec.Restored == nil || rec.Restored.SnapshotID != snap.ID {
		t.Errorf("restored record %+v", rec)
	}
	if n := len(h.backend.procs); n != 1 {
		t.Errorf("%d processes ran, want 1: the original's cmd, not again on restore", n)
	}
	// Again with the same id: the same sandbox, not an error.
	if again, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "copy"}); err != nil || again.ID != "copy" {
		t.Errorf("repeated restore: %+v, %v", again, err)
	}
	// The same id for another outcome is a conflict.
	if _, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "copy", Labels: map[string]string{}}); !errors.Is(err, ErrConflict) {
		t.Errorf("restore over another sandbox: %v, want ErrConflict", err)
	}
	zero := time.Duration(0)
	other, err := h.m.Restore(ctx, snap.ID, RestoreRequest{Labels: map[string]string{}, TTL: &zero})
	if err != nil {
		t.Fatal(err)
	}
	h.m.mu.Lock()
	rec = h.m.boxes[other.ID].rec
	h.m.mu.Unlock()
	if rec.Spec.Labels != nil || rec.Spec.TTL != 0 || other.ID == "copy" {
		t.Errorf("second restore %s: %+v", other.ID, rec.Spec)
	}

	// Listing and filters.
	h.clock.Advance(time.Second)
	snap2, err := h.m.Checkpoint(ctx, "copy", CheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := h.m.Snapshots(SnapshotFilter{}); len(got) != 2 || got[0].ID != snap.ID || got[1].ID != snap2.ID {
		t.Errorf("all snapshots: %+v", got)
	}
	if got := h.m.Snapshots(SnapshotFilter{SandboxID: "copy"}); len(got) != 1 || got[0].ID != snap2.ID {
		t.Errorf("by sandbox: %+v", got)
	}
	if got := h.m.Snapshots(SnapshotFilter{Labels: map[string]string{"k": "v"}}); len(got) != 1 || got[0].ID != snap.ID {
		t.Errorf("by label: %+v", got)
	}

	// They survive a restart; a checkpoint that never finished does not.
	partial := filepath.Join(h.dir, "snapshots", "snap-partial")
	if err := os.MkdirAll(filepath.Join(partial, "upper"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	h.start()
	if got := h.m.Snapshots(SnapshotFilter{}); len(got) != 2 || got[0].Name != "before" || got[0].Labels["k"] != "v" {
		t.Errorf("after a restart: %+v", got)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Errorf("partial checkpoint left: %v", err)
	}
	if _, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "after-restart"}); err != nil {
		t.Errorf("restore after a restart: %v", err)
	}

	// Delete frees the files; the restored sandboxes stay.
	if err := h.m.DeleteSnapshot(ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(snap.Dir); !os.IsNotExist(err) {
		t.Errorf("snapshot dir left: %v", err)
	}
	if err := h.m.DeleteSnapshot(ctx, snap.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
	if _, err := h.m.Restore(ctx, snap.ID, RestoreRequest{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("restore of a deleted snapshot: %v, want ErrNotFound", err)
	}
	if st := h.state("copy"); st != StateReady {
		t.Errorf("restored sandbox %s after its snapshot's deletion", st)
	}
}

func TestCheckpointRules(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	if _, err := h.m.Checkpoint(ctx, "nope", CheckpointRequest{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown sandbox: %v", err)
	}
	h.createReady(Spec{ID: "box"})
	if _, err := h.m.Checkpoint(ctx, "box", CheckpointRequest{Name: strings.Repeat("x", 257)}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"name"`) {
		t.Errorf("long name: %v", err)
	}
	if _, err := h.m.Checkpoint(ctx, "box", CheckpointRequest{Labels: map[string]string{"": "v"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty label key: %v", err)
	}

	// Running: 409.
	done := make(chan struct{})
	runCtx, cancel := context.WithCancel(ctx)
	go func() {
		defer close(done)
		_, _ = h.m.Run(runCtx, "box", Process{Cmd: []string{"block"}}, nil)
	}()
	h.expect("box", ActionRunning)
	if _, err := h.m.Checkpoint(ctx, "box", CheckpointRequest{}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "running") {
		t.Errorf("checkpoint while running: %v", err)
	}
	cancel()
	<-done
	h.expect("box", ActionIdle)

	// While a checkpoint captures the files, a run is refused.
	gate := make(chan struct{})
	h.backend.mu.Lock()
	h.backend.checkpointGate = gate
	h.backend.mu.Unlock()
	cp := make(chan error, 1)
	go func() {
		_, err := h.m.Checkpoint(ctx, "box", CheckpointRequest{})
		cp <- err
	}()
	sandboxtest.WaitFor(t, "the checkpoint to claim the sandbox", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		return h.m.boxes["box"].checkpointing
	})
	if _, err := h.m.Run(ctx, "box", Process{Cmd: []string{"echo"}}, nil); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "checkpointed") {
		t.Errorf("run during a checkpoint: %v", err)
	}
	if _, err := h.m.Checkpoint(ctx, "box", CheckpointRequest{}); !errors.Is(err, ErrConflict) {
		t.Errorf("second checkpoint: %v", err)
	}
	close(gate)
	if err := <-cp; err != nil {
		t.Fatal(err)
	}

	// A failed checkpoint leaves nothing.
	h.backend.mu.Lock()
	h.backend.checkpointGate, h.backend.checkpointErr = nil, errors.New("disk full")
	h.backend.mu.Unlock()
	if _, err := h.m.Checkpoint(ctx, "box", CheckpointRequest{}); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("failing checkpoint: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(h.dir, "snapshots"))
	if len(entries) != 1 || len(h.m.Snapshots(SnapshotFilter{})) != 1 {
		t.Errorf("after a failed checkpoint: %d dirs, %d snapshots; want the one good one", len(entries), len(h.m.Snapshots(SnapshotFilter{})))
	}

	// Stopped: 409.
	if _, err := h.m.Stop(ctx, "box", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Checkpoint(ctx, "box", CheckpointRequest{}); !errors.Is(err, ErrConflict) {
		t.Errorf("checkpoint of a stopped sandbox: %v", err)
	}
}

func TestRestoreFailureLeavesNothing(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.createReady(Spec{ID: "orig"})
	snap, err := h.m.Checkpoint(ctx, "orig", CheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.backend.mu.Lock()
	h.backend.startErr = errors.New("the lower layer is gone")
	h.backend.mu.Unlock()
	if _, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "doomed"}); err == nil || !strings.Contains(err.Error(), "the lower layer is gone") ||
		strings.Contains(err.Error(), "shut down") {
		t.Errorf("failing restore: %v, want the start's error and nothing about a shutdown", err)
	}
	if _, err := h.m.Get("doomed"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a failed restore left its sandbox: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "sandboxes", "doomed")); !os.IsNotExist(err) {
		t.Errorf("a failed restore left its directory: %v", err)
	}
	if _, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "../x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad id: %v", err)
	}
	if _, err := h.m.Restore(ctx, snap.ID, RestoreRequest{NetworkMode: "wormhole"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"network_override.mode"`) {
		t.Errorf("bad network mode: %v", err)
	}
}

// TestRestoreFailureLeavesNothingWhenRemovalsAreFull: the cleanup of a
// failed restore is not a client's remove: a full removal queue does not
// keep it from leaving nothing behind.
func TestRestoreFailureLeavesNothingWhenRemovalsAreFull(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Workers, c.QueueDepth = 1, 1 })
	ctx := context.Background()
	h.createReady(Spec{ID: "orig"})
	snap, err := h.m.Checkpoint(ctx, "orig", CheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Two removals hold the queue: one running (its stop waits on a
	// checkpoint's opMu), one waiting.
	h.createReady(Spec{ID: "a"})
	h.createReady(Spec{ID: "b"})
	gate := make(chan struct{})
	h.backend.mu.Lock()
	h.backend.checkpointGate = gate
	h.backend.mu.Unlock()
	checkpointed := make(chan error, 1)
	go func() { _, err := h.m.Checkpoint(ctx, "a", CheckpointRequest{}); checkpointed <- err }()
	sandboxtest.WaitFor(t, "the checkpoint to hold a", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		return h.m.boxes["a"].checkpointing
	})
	removed := make(chan error, 2)
	go func() { removed <- h.m.Remove(ctx, "a", true) }()
	sandboxtest.WaitFor(t, "a's removal to take its turn", func() bool { return len(h.m.removals.slots) == 1 })
	go func() { removed <- h.m.Remove(ctx, "b", true) }()
	sandboxtest.WaitFor(t, "b's removal to wait", func() bool {
		h.m.removals.mu.Lock()
		defer h.m.removals.mu.Unlock()
		return h.m.removals.held == 2
	})
	if err := h.m.Remove(ctx, "orig", true); !errors.Is(err, ErrBusy) {
		t.Fatalf("a third removal: %v, want ErrBusy", err)
	}

	h.backend.mu.Lock()
	h.backend.startErr = errors.New("boom")
	h.backend.mu.Unlock()
	restored := make(chan error, 1)
	go func() { _, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "r"}); restored <- err }()
	sandboxtest.WaitFor(t, "the failed restore to wait for its cleanup", func() bool {
		h.m.removals.mu.Lock()
		defer h.m.removals.mu.Unlock()
		return h.m.removals.held == 3
	})
	close(gate)
	if err := <-checkpointed; err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-removed; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-restored; err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("restore: %v, want the start's error", err)
	}
	if _, err := h.m.Get("r"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a failed restore left its sandbox: %v", err)
	}
}

// TestRestoreClientGoneWhileQueued: a restore whose client goes away
// while its start waits its turn makes no sandbox.
func TestRestoreClientGoneWhileQueued(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Workers = 1 })
	h.createReady(Spec{ID: "orig"})
	snap, err := h.m.Checkpoint(context.Background(), "orig", CheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	h.backend.mu.Lock()
	h.backend.startGate = gate
	h.backend.mu.Unlock()
	opened := false
	defer func() {
		if !opened {
			close(gate)
		}
	}()
	h.create(Spec{ID: "hog"}) // takes the one worker until the gate opens
	sandboxtest.WaitFor(t, "hog to start", func() bool { return len(h.m.starts.slots) == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	restored := make(chan error, 1)
	go func() { _, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "late"}); restored <- err }()
	sandboxtest.WaitFor(t, "the restore to queue", func() bool {
		_, err := h.m.Get("late")
		return err == nil
	})
	cancel()
	if err := <-restored; err == nil || !strings.Contains(err.Error(), "went away") {
		t.Fatalf("restore after its client went: %v, want an error saying so", err)
	}
	if _, err := h.m.Get("late"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the restore left a sandbox: %v", err)
	}
	close(gate)
	opened = true
	h.expect("hog", ActionReady)
}

// TestBridgeAddresses checks the manager's side of bridge networking: an
// address from creation (in the first answer) to removal, "tap" taken as
// "bridge", addresses held again after a restart, and a restore with a
// network override getting an address of its own.
func TestBridgeAddresses(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	a := h.createReady(Spec{ID: "a", NetworkMode: "tap"})
	if a.NetworkMode != NetworkBridge || a.IPAddress != "10.9.0.2" || a.Gateway != "10.9.0.1" {
		t.Errorf("created: %+v, want bridge with an address from the start", a)
	}
	none := h.createReady(Spec{ID: "none"})
	if none.IPAddress != "" || none.NetworkMode != NetworkNone {
		t.Errorf("network none: %+v", none)
	}
	snap, err := h.m.Checkpoint(ctx, "none", CheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	r1, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "r1", NetworkMode: "bridge"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := h.m.Restore(ctx, snap.ID, RestoreRequest{ID: "r2", NetworkMode: "tap"})
	if err != nil {
		t.Fatal(err)
	}
	if r1.IPAddress == "" || r2.IPAddress == "" || r1.IPAddress == r2.IPAddress || r1.IPAddress == a.IPAddress {
		t.Errorf("restored with network overrides: %s and %s (a has %s), want two new addresses", r1.IPAddress, r2.IPAddress, a.IPAddress)
	}

	// A restart holds the recorded addresses again before anything new.
	if err := h.m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	h.start()
	if got, _ := h.m.Get("r1"); got.IPAddress != r1.IPAddress {
		t.Errorf("r1 after a restart: %+v", got)
	}
	b := h.createReady(Spec{ID: "b", NetworkMode: "bridge"})
	if b.IPAddress == a.IPAddress || b.IPAddress == r1.IPAddress || b.IPAddress == r2.IPAddress {
		t.Errorf("b got %s, held by another sandbox", b.IPAddress)
	}
	// Removal frees the address.
	if err := h.m.Remove(ctx, "a", true); err != nil {
		t.Fatal(err)
	}
	c := h.createReady(Spec{ID: "c", NetworkMode: "bridge"})
	if c.IPAddress != a.IPAddress {
		t.Errorf("c got %s, want a's freed %s", c.IPAddress, a.IPAddress)
	}
}

// TestCreateOverDebrisKeepsItsAddress: clearing what an earlier sandbox of
// the same id left must not free the address the new one was given.
func TestCreateOverDebrisKeepsItsAddress(t *testing.T) {
	h := newHarness(t)
	if err := os.MkdirAll(filepath.Join(h.dir, "sandboxes", "d", "layer"), 0o700); err != nil {
		t.Fatal(err)
	}
	d := h.createReady(Spec{ID: "d", NetworkMode: NetworkBridge})
	e := h.createReady(Spec{ID: "e", NetworkMode: NetworkBridge})
	if d.IPAddress == "" || d.IPAddress == e.IPAddress {
		t.Errorf("d has %q, e has %q: want two addresses", d.IPAddress, e.IPAddress)
	}
}

// TestUnreadableSnapshotKept: a snapshot whose record this agent cannot
// read (a newer agent's, say) is not loaded, and not deleted either.
func TestUnreadableSnapshotKept(t *testing.T) {
	h := newHarness(t)
	dir := filepath.Join(h.dir, "snapshots", "snap-future")
	if err := os.MkdirAll(filepath.Join(dir, "layer"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapshotRecordFile), []byte(`{"version":99,"id":"snap-future"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.start()
	if got := h.m.Snapshots(SnapshotFilter{}); len(got) != 0 {
		t.Errorf("loaded %+v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "layer")); err != nil {
		t.Errorf("an unreadable snapshot's files were removed: %v", err)
	}
}
