package oci

// A running container: adopting it after a restart, stopping and
// destroying it.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/sandbox"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// track starts watching a sandbox's init.
func (b *Backend) track(id string, pid int, meta bundleMeta) (*container, error) {
	w, err := watchPid(pid)
	if err != nil {
		return nil, err
	}
	ns, err := pidNamespace(pid)
	if err != nil {
		w.close()
		return nil, fmt.Errorf("init %d: %w", pid, err)
	}
	box := &container{init: w, ns: ns, meta: meta}
	b.mu.Lock()
	if old := b.boxes[id]; old != nil {
		old.init.close()
	}
	b.boxes[id] = box
	b.mu.Unlock()
	return box, nil
}

func (b *Backend) box(id string) (*container, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	box := b.boxes[id]
	if box == nil {
		return nil, sandbox.Errorf(sandbox.ErrConflict, "sandbox %q has no running container", id)
	}
	return box, nil
}

// Adopt finds a container made before an agent restart.
func (b *Backend) Adopt(ctx context.Context, id string) (<-chan struct{}, bool, error) {
	c, err := b.rt.State(ctx, id)
	if err != nil {
		if b.gone(id) {
			return nil, false, nil
		}
		return nil, false, err
	}
	if c.Status == "paused" && c.Pid > 0 {
		// Frozen by a checkpoint that an agent killed half way never
		// thawed: the sandbox is whole, only stopped in its tracks.
		if err := b.rt.Resume(ctx, id); err != nil {
			return nil, false, fmt.Errorf("thaw it (left frozen by a checkpoint the agent did not finish): %w", err)
		}
		b.log.Warn("thawed a sandbox left frozen by a checkpoint the agent did not finish", "id", id)
		c.Status = "running"
	}
	if c.Status != "running" || c.Pid <= 0 {
		return nil, false, nil
	}
	meta, err := readBundleMeta(b.bundle(id))
	if err != nil {
		return nil, false, err
	}
	box, err := b.track(id, c.Pid, meta)
	if err != nil {
		return nil, false, err
	}
	select {
	case <-box.init.exited:
		return nil, false, nil
	default:
	}
	return box.init.exited, true, nil
}

// KillWorkloads kills every process of the sandbox but its init, and
// waits (a few seconds at most) for them to be gone.
func (b *Backend) KillWorkloads(ctx context.Context, id string) error {
	box, err := b.box(id)
	if err != nil {
		return err
	}
	pids, err := b.rt.Ps(ctx, id)
	if err != nil {
		return fmt.Errorf("%s ps: %w", b.runtimeName, err)
	}
	var errs []error
	var watches []*pidWatch
	for _, pid := range pids {
		if pid == box.init.pid {
			continue
		}
		if w, err := watchPid(pid); err == nil {
			watches = append(watches, w)
			defer w.close()
		}
		errs = append(errs, signalInNamespace(pid, box.ns, unix.SIGKILL))
	}
	for _, w := range watches {
		if !w.wait(initKillTimeout) {
			errs = append(errs, fmt.Errorf("process %d outlived SIGKILL", w.pid))
		}
	}
	return errors.Join(errs...)
}

// Stop ends the init (SIGTERM: it exits at once, and the kernel kills the
// rest of the sandbox with it), deletes the container, and unmounts its root.
func (b *Backend) Stop(ctx context.Context, id string) error {
	b.mu.Lock()
	box := b.boxes[id]
	delete(b.boxes, id)
	b.mu.Unlock()
	if box != nil {
		defer box.init.close()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeTimeout)
	defer cancel()

	c, err := b.rt.State(ctx, id)
	switch {
	case err != nil && b.gone(id):
		// never made, or deleted already
	case err != nil:
		return fmt.Errorf("%s state: %w", b.runtimeName, err)
	default:
		if c.Status == "paused" {
			// Frozen (a checkpoint cut short): a frozen init cannot act
			// on SIGTERM, and on a cgroup v1 freezer not even on SIGKILL.
			if err := b.rt.Resume(ctx, id); err != nil {
				b.log.Warn("thaw the sandbox to stop it", "id", id, "err", err)
			}
		}
		if c.Status == "running" || c.Status == "created" || c.Status == "paused" {
			w := box.initWatch()
			if w == nil && c.Pid > 0 {
				if w, err = watchPid(c.Pid); err != nil {
					return err
				}
				defer w.close()
			}
			if err := b.rt.Kill(ctx, id, int(unix.SIGTERM), nil); err != nil && !b.gone(id) {
				b.log.Warn("SIGTERM the sandbox init", "id", id, "err", err)
			}
			if w != nil && !w.wait(initTermTimeout) {
				if err := b.rt.Kill(ctx, id, int(unix.SIGKILL), &runc.KillOpts{All: true}); err != nil && !b.gone(id) {
					return fmt.Errorf("%s kill: %w", b.runtimeName, err)
				}
				if !w.wait(initKillTimeout) {
					return fmt.Errorf("the init of sandbox %q outlived SIGKILL", id)
				}
			}
		}
		if err := b.rt.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil && !b.gone(id) {
			return fmt.Errorf("%s delete: %w", b.runtimeName, err)
		}
	}
	if err := b.clearLeftover(id); err != nil {
		return err
	}
	b.removeCgroups(id)
	if err := b.net.Teardown(id); err != nil {
		return err
	}
	// The lower directory is an idmapped mount, and the mounts directory
	// holds mounts of the sources, only if an agent died while it made
	// them: before the files are removed, make sure they are none, or
	// they would be the image's and the mounted directories'.
	if err := unmount(filepath.Join(b.bundle(id), lowerDir)); err != nil {
		return err
	}
	if err := b.detachMounts(id); err != nil {
		return err
	}
	return unmount(filepath.Join(b.bundle(id), "rootfs"))
}

func (box *container) initWatch() *pidWatch {
	if box == nil {
		return nil
	}
	return box.init
}

// cleanup undoes a start that failed half way.
func (b *Backend) cleanup(id string) {
	if err := b.Stop(context.Background(), id); err != nil {
		b.log.Error("clean up a failed start", "id", id, "err", err)
	}
}

// Destroy removes the bundle's files, once nothing is mounted on its root.
func (b *Backend) Destroy(ctx context.Context, id string) error {
	if err := b.Stop(ctx, id); err != nil {
		return err
	}
	dir := b.bundle(id)
	rootfs := filepath.Join(dir, "rootfs")
	mounted, err := isMountPoint(rootfs)
	if err != nil {
		return fmt.Errorf("sandbox %q: not removing its files: %w", id, err)
	}
	if mounted {
		return fmt.Errorf("sandbox %q: its root %s is still mounted; not removing its files", id, rootfs)
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if sandbox.IsRecordFile(e.Name()) {
			continue
		}
		switch e.Name() {
		case layerDir:
			err = b.deleteLayer(p)
		default:
			err = os.RemoveAll(p)
		}
		if err != nil {
			return err
		}
	}
	// Its volume directory goes with it: nothing is ever mounted there.
	if err := os.RemoveAll(filepath.Join(b.mounts.volumes, id)); err != nil {
		return err
	}
	b.net.Release(id)
	return nil
}

// deleteLayer removes a writable layer or a snapshot's copy of one: a
// btrfs subvolume, or a plain tree (one made before the state directory
// was on btrfs, or a copy with immutable files).
func (b *Backend) deleteLayer(p string) error {
	if err := b.snap.Delete(p); err != nil {
		if cerr := disk.NewCopySnapshotter().Delete(p); cerr != nil {
			return err
		}
	}
	return nil
}
