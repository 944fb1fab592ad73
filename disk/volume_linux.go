package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ensure is Ensure's work, run under ensureMu.
func (v *Volume) ensure(ctx context.Context) (string, error) {
	mounts, err := readMountInfo(v.cfg.MountInfoPath)
	if err != nil {
		return "", err
	}
	dev, err := v.openDevice()
	if err != nil {
		return "", err
	}
	defer dev.close()

	// Judge every mount path before changing anything, so a conflict on a
	// target stops Ensure before it formats.
	topMounted, err := v.checkMounted(mounts, v.cfg.MountPoint, "/", dev)
	if err != nil {
		return "", err
	}
	subMounted := make([]bool, len(v.cfg.Subvolumes))
	for i, sv := range v.cfg.Subvolumes {
		if subMounted[i], err = v.checkMounted(mounts, sv.Target, "/"+sv.Name, dev); err != nil {
			return "", err
		}
	}

	var notes []string
	if dev.note != "" {
		notes = append(notes, dev.note)
	}
	if topMounted {
		v.setSignature(Signature{Kind: KindBtrfs, Offset: btrfsMagicOffset})
	} else {
		n, err := v.prepareAndMount(ctx, dev)
		if err != nil {
			return "", err
		}
		notes = append(notes, n...)
	}
	for i, sv := range v.cfg.Subvolumes {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := v.ensureSubvolume(dev, sv, subMounted[i])
		if err != nil {
			return "", err
		}
		notes = append(notes, n...)
	}
	if len(notes) == 0 {
		return "data volume already mounted", nil
	}
	return strings.Join(notes, "; "), nil
}

// checkMounted reports whether path already has the btrfs of dev mounted
// with the given root ("/" for the top level, "/@docker" for a subvolume),
// and fails with ErrMountConflict when something else is mounted there.
func (v *Volume) checkMounted(mounts []MountInfo, path, root string, dev *device) (bool, error) {
	m := findMount(mounts, resolvePath(path))
	if m == nil {
		return false, nil
	}
	if m.FSType == "btrfs" && m.Root == root && isDevice(m.Source, dev.rdev) {
		return true, nil
	}
	return false, fmt.Errorf("%s: %s from %q (root %s) is mounted there, not %s of %s: %w",
		path, m.FSType, m.Source, m.Root, root, dev.path, ErrMountConflict)
}

// prepareAndMount mounts the top level of a device that is not mounted yet,
// formatting it first when plan says so.
func (v *Volume) prepareAndMount(ctx context.Context, dev *device) ([]string, error) {
	v.setPhase("inspecting " + dev.path)
	sig, err := detectDevice(dev.path)
	if err != nil {
		return nil, fmt.Errorf("data device %s: %w", v.cfg.Device, err)
	}
	v.setSignature(sig)
	intent, err := v.journal.pending(dev.id)
	if err != nil {
		v.log.Warn("ignoring unreadable format journal", "err", err)
	}
	act, err := plan(sig, intent, v.cfg.Wipe)
	if err != nil {
		return nil, fmt.Errorf("data device %s: %w", v.describe(dev), err)
	}
	v.log.Info("inspected data device", "found", sig.String(), "format_intent", intent, "wipe", v.cfg.Wipe)

	var notes []string
	if act == actMount {
		err := v.mountTop(dev)
		switch {
		case err == nil:
			notes = append(notes, fmt.Sprintf("mounted %s at %s", dev.path, v.cfg.MountPoint))
			return notes, v.finishFormat(intent)
		case !intent:
			return nil, fmt.Errorf("data device %s: has a btrfs superblock but %w; the filesystem may be damaged: "+
				"inspect it with btrfs check; it is never reformatted automatically, even with --wipe-data-device "+
				"(erase it with wipefs -a first if its data is expendable): %w", v.describe(dev), err, ErrDamagedFilesystem)
		}
		v.log.Warn("btrfs left by an interrupted format does not mount; formatting again", "err", err)
		act = actReformat
	}

	if err := v.format(ctx, dev, act == actReformat); err != nil {
		return nil, err
	}
	switch {
	case intent:
		notes = append(notes, fmt.Sprintf("redid an interrupted format: formatted %s as btrfs (found %s)", dev.path, sig))
	case act == actReformat:
		notes = append(notes, fmt.Sprintf("wiped %s (found %s) and formatted it as btrfs", dev.path, sig))
	default:
		notes = append(notes, fmt.Sprintf("formatted %s as btrfs", dev.path))
	}
	if err := v.mountTop(dev); err != nil {
		return nil, fmt.Errorf("data device %s: freshly formatted but %w (format intent kept; the next Ensure formats again): %w",
			v.describe(dev), err, ErrDamagedFilesystem)
	}
	notes = append(notes, fmt.Sprintf("mounted %s at %s", dev.path, v.cfg.MountPoint))
	return notes, v.finishFormat(true)
}

// format records the intent, runs mkfs.btrfs and checks it left a complete
// superblock.
func (v *Volume) format(ctx context.Context, dev *device, force bool) error {
	v.setPhase("formatting " + dev.path)
	if err := v.journal.record(v.cfg.Device, dev.id); err != nil {
		return fmt.Errorf("data device %s: not formatting: %w", v.describe(dev), err)
	}
	if err := v.mkfs(ctx, dev.path, force); err != nil {
		return fmt.Errorf("data device %s: format: %w", v.describe(dev), err)
	}
	sig, err := detectDevice(dev.path)
	if err != nil {
		return fmt.Errorf("data device %s: after format: %w", v.describe(dev), err)
	}
	v.setSignature(sig)
	if sig.Kind != KindBtrfs {
		return fmt.Errorf("data device %s: mkfs.btrfs succeeded but the device carries %s", v.describe(dev), sig)
	}
	return nil
}

// finishFormat removes the format intent once the filesystem it covers has
// mounted. Failing to remove it is an error: a stale intent would later let
// a mount failure reformat a volume holding data.
func (v *Volume) finishFormat(intent bool) error {
	if !intent {
		return nil
	}
	return v.journal.clear()
}

// mountTop mounts the top level of dev on the mount point.
func (v *Volume) mountTop(dev *device) error {
	v.setPhase("mounting " + dev.path)
	return mountBtrfs(dev.path, v.cfg.MountPoint, MountOptions)
}

// ensureSubvolume creates sv in the mounted top level if it is missing and
// mounts it on its target unless it is mounted there already.
func (v *Volume) ensureSubvolume(dev *device, sv Subvolume, mounted bool) ([]string, error) {
	var notes []string
	path := filepath.Join(v.cfg.MountPoint, sv.Name)
	ok, err := isSubvolume(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := createSubvolume(path); err != nil {
			return nil, err
		}
		notes = append(notes, "created subvolume "+sv.Name)
	case err != nil:
		return nil, err
	case !ok:
		return nil, fmt.Errorf("%s exists but is not a btrfs subvolume; move it away", path)
	}
	if mounted {
		return notes, nil
	}
	v.setPhase("mounting " + sv.Name)
	if err := mountBtrfs(dev.path, sv.Target, MountOptions+",subvol="+sv.Name); err != nil {
		return nil, err
	}
	return append(notes, fmt.Sprintf("mounted %s at %s", sv.Name, sv.Target)), nil
}

// mountBtrfs creates target if needed and mounts the btrfs on source there.
func mountBtrfs(source, target, options string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	if err := unix.Mount(source, target, "btrfs", 0, options); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", source, target, options, err)
	}
	return nil
}

// describe names the device for errors: the configured path, and the loop
// device when there is one.
func (v *Volume) describe(dev *device) string {
	if dev.path == v.cfg.Device {
		return dev.path
	}
	return fmt.Sprintf("%s (on %s)", v.cfg.Device, dev.path)
}

// unmount is Unmount's work, run under ensureMu.
func (v *Volume) unmount() ([]string, error) {
	mounts, err := readMountInfo(v.cfg.MountInfoPath)
	if err != nil {
		return nil, err
	}
	top := findMount(mounts, resolvePath(v.cfg.MountPoint))
	if top == nil || top.FSType != "btrfs" || top.Root != "/" {
		return nil, nil // not mounted: nothing of the volume's to undo
	}
	// Only the volume's own mounts: btrfs of the top level's device, each
	// subvolume where the configuration puts it, last mounted first.
	ours := func(path, root string) bool {
		m := findMount(mounts, resolvePath(path))
		return m != nil && m.FSType == "btrfs" && m.Root == root && m.Major == top.Major && m.Minor == top.Minor
	}
	var done []string
	var errs []error
	for i := len(v.cfg.Subvolumes) - 1; i >= 0; i-- {
		sv := v.cfg.Subvolumes[i]
		if !ours(sv.Target, "/"+sv.Name) {
			continue
		}
		if err := unix.Unmount(sv.Target, 0); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s from %s: %w", sv.Name, sv.Target, err))
			continue
		}
		done = append(done, sv.Target)
	}
	if len(errs) > 0 {
		// The top level stays while a subvolume is still mounted: the
		// device is busy anyway, and the error says which one holds it.
		return done, errors.Join(errs...)
	}
	if err := unix.Unmount(v.cfg.MountPoint, 0); err != nil {
		return done, fmt.Errorf("unmount the data volume's top level from %s: %w", v.cfg.MountPoint, err)
	}
	return append(done, v.cfg.MountPoint), nil
}
