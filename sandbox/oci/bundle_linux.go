package oci

// A sandbox's bundle: its layers, mounts, network and config.json, made by
// Start.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// bundleMeta is what a sandbox was made from, kept in backend.json so
// processes started after an agent restart get the same defaults.
type bundleMeta struct {
	Lower string      `json:"lower"` // the overlay's read-only layer
	Image imageConfig `json:"image"`
	// sandbox.IDMap is the range of the sandbox's user namespace, which its
	// writable layer's files are owned in; zero without one.
	IDMap sandbox.IDMap `json:"id_map,omitzero"`
}

// readBundleMeta reads backend.json from a bundle or snapshot directory.
func readBundleMeta(dir string) (bundleMeta, error) {
	var meta bundleMeta
	data, err := os.ReadFile(filepath.Join(dir, bundleMetaFile))
	if err != nil {
		return meta, err
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return meta, fmt.Errorf("%s: %w", filepath.Join(dir, bundleMetaFile), err)
	}
	return meta, nil
}

// Start makes the bundle (overlay root, config.json) and runs the init.
// A sandbox restored from a snapshot gets a writable copy of the
// snapshot's layer over the lower layer the snapshot was taken over.
//
// With a user namespace (idmap.Size > 0) the lower layer is seen through
// an idmapped mount, so its files, owned by root and the image's users,
// belong to the sandbox's range without a byte of it changing; where the
// file system has no idmapped mounts the sandbox gets a copy of it with
// shifted owners instead. The writable layer's files are stored in the
// range, as the sandbox makes them; a snapshot restored into another range
// is shifted to it.
func (b *Backend) Start(ctx context.Context, r sandbox.StartRequest) (exited <-chan struct{}, err error) {
	id, s, idmap, from := r.ID, r.Spec, r.IDMap, r.From
	dir := b.bundle(id)
	// The user namespace an idmapped lower layer is made with costs a
	// fork of the agent: it is made ahead, when the last start could
	// tell this one's range, else while the image, the bundle and the
	// writable layer are, not after them. Once this start is done, the
	// next one's is made (where sandboxes with one can start at all).
	if b.usernsErr == nil {
		defer b.userns.prepare(r.NextIDMap)
	}
	var userns <-chan usernsResult
	if idmap.Size > 0 {
		userns = b.userns.take(idmap)
		defer func() { dropUserns(userns) }() // not taken (nil once it is): Start failed before
	}
	var meta bundleMeta
	var layerMap sandbox.IDMap // the range the restored layer's files are in
	switch {
	case from != "":
		if meta, err = readBundleMeta(from); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", from, err)
		}
		if _, err := os.Stat(meta.Lower); err != nil {
			return nil, fmt.Errorf("the root filesystem the snapshot was taken over is gone: %w", err)
		}
		layerMap = meta.IDMap
	case s.Image != "":
		img, err := b.images.get(ctx, s.Image, s.RegistryAuth, r.Progress)
		if err != nil {
			return nil, err
		}
		meta = bundleMeta{Lower: img.Rootfs, Image: img.Config}
	case s.Rootfs != "":
		if meta.Lower, err = b.checkRootfs(s.Rootfs); err != nil {
			return nil, sandbox.InvalidField("rootfs", "%v", err)
		}
	default:
		meta.Lower = b.defaultRootfs
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	meta.IDMap = idmap
	data, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	// Not synced: read back while the sandbox runs (an agent restarted
	// adopts it, a checkpoint copies it durably), which no reboot lets
	// it do; after a machine crash, it is read only for the image config
	// of a sandbox that failed with the crash (ImageConfig), where one
	// torn answers an error naming the file.
	if err := atomicfile.Replace(filepath.Join(dir, bundleMetaFile), data, 0o600); err != nil {
		return nil, err
	}
	// The sandbox's root (its range's first id) makes the runtime's
	// mounts from inside its user namespace: it must be able to pass
	// through the bundle, and no other user may.
	root := int(idmap.HostID)
	if err := os.Chown(dir, 0, root); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o710); err != nil {
		return nil, err
	}
	// The overlay's upper and work directories live in one layer
	// directory, a btrfs subvolume where the state directory is on btrfs:
	// overlayfs moves files between them, which btrfs refuses across
	// subvolumes, and a snapshot of the layer takes both.
	rootfs, layer := filepath.Join(dir, "rootfs"), filepath.Join(dir, layerDir)
	upper, work := filepath.Join(layer, "upper"), filepath.Join(layer, "work")
	if err := os.MkdirAll(rootfs, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.cleanup(id)
		}
	}()
	if from != "" {
		src := filepath.Join(from, layerDir)
		if err := b.snap.Snapshot(src, layer, false); err != nil {
			// A snapshot taken as a copy (of a layer that was no
			// subvolume) is no subvolume either: copy it in turn.
			_ = b.deleteLayer(layer)
			if cerr := disk.NewCopySnapshotter().Snapshot(src, layer, false); cerr != nil {
				return nil, fmt.Errorf("restore the snapshot's files: %w (then, copying: %w)", err, cerr)
			}
		}
		if err := shiftOwners(layer, layerMap.HostID, idmap.HostID, sandbox.IDRangeSize); err != nil {
			return nil, fmt.Errorf("restore the snapshot's files into the sandbox's id range: %w", err)
		}
	} else {
		if err := b.snap.Create(layer); err != nil {
			return nil, fmt.Errorf("writable layer: %w", err)
		}
		for _, d := range []string{upper, work} {
			if err := os.Mkdir(d, 0o700); err != nil {
				return nil, err
			}
		}
		// The root of the merged tree takes the upper dir's owner and mode.
		if err := copyOwnerMode(meta.Lower, upper, idmap.HostID); err != nil {
			return nil, err
		}
	}
	lower, idmapped, err := b.lowerLayer(dir, meta.Lower, idmap, userns)
	userns = nil
	if err != nil {
		return nil, err
	}
	err = mountOverlay(lower, upper, work, rootfs)
	if idmapped {
		// The overlay holds its own clone of the idmapped mount.
		if uerr := unmount(lower); uerr != nil && err == nil {
			err = uerr
		}
	}
	if err != nil {
		return nil, err
	}
	if wd := firstNonEmpty(s.WorkingDir, meta.Image.WorkingDir); wd != "" {
		if err := mkdirAllInRoot(rootfs, wd, 0o755, root, root); err != nil {
			return nil, fmt.Errorf("working dir %s: %w", wd, err)
		}
	}
	params := bundleParams{
		ID:             id,
		InitPath:       b.initPath,
		Limits:         s.Limits,
		CgroupsPath:    filepath.Join(b.cgroupParent, id),
		Cgroup2:        b.cgroup2,
		IDMap:          idmap,
		ReadOnlyRootfs: s.Security.ReadOnlyRootfs,
	}
	// Each mount source is opened and checked here, and the runtime binds
	// a mount of what was opened, attached in the bundle until it has.
	if params.Mounts, err = b.attachMounts(dir, id, s.Mounts, root); err != nil {
		return nil, err
	}
	defer func() {
		// The runtime has bound them (or failed): the sandbox holds its
		// own copies. One left behind is removed by Stop.
		if err := b.detachMounts(id); err != nil {
			b.log.Warn("detach the mount sources from the bundle", "id", id, "err", err)
		}
	}()
	if s.NetworkMode == sandbox.NetworkBridge {
		if params.NetnsPath, params.ResolvConf, err = b.setupNetwork(ctx, id, r.Address, dir); err != nil {
			return nil, err
		}
	}
	spec, err := buildSpec(params)
	if err != nil {
		return nil, err
	}
	if data, err = json.Marshal(spec); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		return nil, err
	}
	pidFile := filepath.Join(dir, initPidFile)
	os.Remove(pidFile)
	if err := b.runtimeRun(ctx, id, dir, pidFile); err != nil {
		return nil, err
	}
	pid, err := readPidFile(pidFile)
	if err != nil {
		return nil, err
	}
	box, err := b.track(id, pid, meta)
	if err != nil {
		return nil, err
	}
	return box.init.exited, nil
}

// mountsDir is the bundle directory where a sandbox's bind-mount sources
// are attached while the runtime makes its mounts.
const mountsDir = "mounts"

// attachMounts opens and checks each mount's source (mountPolicy.open)
// and attaches a bind mount of exactly what it opened at <dir>/mounts/<i>,
// which only root can reach: the runtime binds from there, so nothing
// swapped into the source path after the check can be what it mounts.
// The sources come back rewritten to those places; detachMounts removes
// them once the runtime is done.
func (b *Backend) attachMounts(dir, id string, mounts []sandbox.Mount, root int) ([]sandbox.Mount, error) {
	if len(mounts) == 0 {
		return nil, nil
	}
	base := filepath.Join(dir, mountsDir)
	if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	out := make([]sandbox.Mount, 0, len(mounts))
	for i, m := range mounts {
		f, err := b.mounts.open(i, id, m, root, root)
		if err != nil {
			return nil, err
		}
		at := filepath.Join(base, strconv.Itoa(i))
		err = bindOpenFile(f, at)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("mounts[%d]: %w", i, err)
		}
		out = append(out, sandbox.Mount{Source: at, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	return out, nil
}

// detachMounts unmounts and removes what attachMounts left of sandbox id.
func (b *Backend) detachMounts(id string) error {
	base := filepath.Join(b.bundle(id), mountsDir)
	entries, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(base, e.Name())
		if err := unmount(p); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return os.Remove(base)
}

// bindOpenFile attaches a bind mount of f (an O_PATH file, a directory or
// a regular file; not what is mounted below it) at path, made for it.
func bindOpenFile(f *os.File, path string) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	} else if err := os.WriteFile(path, nil, 0o600); err != nil {
		return err
	}
	fd, err := unix.OpenTree(int(f.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("clone the mount of %s: %w", f.Name(), err)
	}
	defer unix.Close(fd)
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach %s on %s: %w", f.Name(), path, err)
	}
	return nil
}

// lowerDir is where a sandbox with a user namespace sees its lower layer:
// an idmapped mount while the overlay is made, else a shifted copy.
const lowerDir = "lower"

// lowerLayer is the overlay's lower layer for a sandbox of range idmap:
// lower itself without a user namespace, else lower seen through an
// idmapped mount on the bundle's lower directory (idmapped is true: the
// caller unmounts it once the overlay holds it), or, where the file system
// cannot idmap, a copy of lower there with the owners shifted. userns
// (usernsAhead.take of idmap, nil without a user namespace) is taken and
// closed.
func (b *Backend) lowerLayer(dir, lower string, idmap sandbox.IDMap, userns <-chan usernsResult) (path string, idmapped bool, err error) {
	if idmap.Size == 0 {
		return lower, false, nil
	}
	ns := <-userns
	if ns.err != nil {
		return "", false, ns.err
	}
	defer ns.f.Close()
	target := filepath.Join(dir, lowerDir)
	if err := unmount(target); err != nil {
		return "", false, err
	}
	if err := os.RemoveAll(target); err != nil {
		return "", false, err
	}
	if err := os.Mkdir(target, 0o700); err != nil {
		return "", false, err
	}
	err = mountIDMapped(lower, target, ns.f)
	if err == nil {
		return target, true, nil
	}
	if !errors.Is(err, errNoIDMap) {
		return "", false, err
	}
	b.noIDMapOnce.Do(func() {
		b.log.Warn("the state dir's file system has no idmapped mounts: each sandbox with a user namespace gets a copy of its root filesystem, owned by its range", "err", err)
	})
	if err := os.Remove(target); err != nil {
		return "", false, err
	}
	if err := disk.NewCopySnapshotter().Snapshot(lower, target, false); err != nil {
		return "", false, err
	}
	if err := shiftOwners(target, 0, idmap.HostID, idmap.Size); err != nil {
		return "", false, err
	}
	return target, false, nil
}

// copyOwnerMode gives dst the owner of src, its ids plus shift (the
// sandbox's range), and its permission bits.
func copyOwnerMode(src, dst string, shift uint32) error {
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return &os.PathError{Op: "stat", Path: src, Err: err}
	}
	if shift > 0 && (st.Uid >= sandbox.IDRangeSize || st.Gid >= sandbox.IDRangeSize) {
		st.Uid, st.Gid = 0, 0 // out of the range: its root's, not the next range's
	}
	if err := unix.Chown(dst, int(st.Uid+shift), int(st.Gid+shift)); err != nil {
		return &os.PathError{Op: "chown", Path: dst, Err: err}
	}
	if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
		return &os.PathError{Op: "chmod", Path: dst, Err: err}
	}
	return nil
}

// setupNetwork gives a bridged sandbox its network namespace, veth at
// addr (the Manager's) and resolv.conf (written into the bundle), clearing
// what an earlier start of the same id may have left. The backend's own
// pool holds addr meanwhile, until Destroy: Setup refuses an address two
// sandboxes would share.
func (b *Backend) setupNetwork(ctx context.Context, id string, addr netip.Addr, dir string) (netnsPath, resolvConf string, err error) {
	if err := b.net.Reserve(id, addr); err != nil {
		return "", "", fmt.Errorf("network: %w", err)
	}
	if err := b.net.Teardown(id); err != nil {
		return "", "", err
	}
	ep, err := b.net.Setup(ctx, id, addr)
	if err != nil {
		return "", "", err
	}
	data, err := b.net.ResolvConf()
	if err != nil {
		return "", "", fmt.Errorf("network: %w", err)
	}
	resolvConf = filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolvConf, data, 0o644); err != nil {
		return "", "", err
	}
	return ep.NetnsPath, resolvConf, nil
}
