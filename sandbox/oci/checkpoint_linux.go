package oci

// Checkpoints: a frozen sandbox's writable layer, snapshotted.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/sandbox/internal/atomicfile"
)

// Checkpoint freezes the sandbox (its cgroup), snapshots its writable
// layer into dir/layer, read-only, thaws it, and keeps the bundle's
// backend.json beside it: the lower layer and image config a restore
// needs. A sandbox that cannot be frozen is not checkpointed.
func (b *Backend) Checkpoint(ctx context.Context, id, dir string) (err error) {
	if _, err := b.box(id); err != nil {
		return err
	}
	bundle := b.bundle(id)
	meta, err := os.ReadFile(filepath.Join(bundle, bundleMetaFile))
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeTimeout)
	defer cancel()
	// Frozen or not at all: a sandbox that runs while its files are
	// copied could swap a file for a symlink (or a FIFO) under the copy.
	if err := b.rt.Pause(rctx, id); err != nil {
		return fmt.Errorf("freeze sandbox %q for its checkpoint: %w", id, err)
	}
	defer func() {
		// A context of its own: a long copy must not leave the
		// sandbox frozen because the pause's deadline passed.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeTimeout)
		defer cancel()
		if rerr := b.rt.Resume(tctx, id); rerr != nil {
			b.log.Error("thaw the sandbox after a checkpoint", "id", id, "err", rerr)
			err = errors.Join(err, fmt.Errorf("thaw sandbox %q after the checkpoint: %w", id, rerr))
		}
	}()
	src, dst := filepath.Join(bundle, layerDir), filepath.Join(dir, layerDir)
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("sandbox %q has no layer directory (made by an older agent?); it cannot be checkpointed: %w", id, err)
	}
	err = b.snap.Snapshot(src, dst, true)
	if err != nil {
		// A layer made before the state directory was on btrfs is no
		// subvolume; a filesystem without the immutable flag cannot keep
		// a copy read-only. A writable copy is still a snapshot.
		_ = b.deleteLayer(dst)
		if cerr := disk.NewCopySnapshotter().Snapshot(src, dst, false); cerr != nil {
			return fmt.Errorf("%w (then, copying: %w)", err, cerr)
		}
		b.log.Warn("snapshot taken as a writable copy", "id", id, "why", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, bundleMetaFile), meta, 0o600)
}

// DeleteSnapshot removes a snapshot directory.
func (b *Backend) DeleteSnapshot(ctx context.Context, dir string) error {
	if err := b.deleteLayer(filepath.Join(dir, layerDir)); err != nil {
		return err
	}
	// What is left may be a copy cut short, with immutable files.
	return disk.NewCopySnapshotter().Delete(dir)
}
