package disk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// NewSnapshotter returns the Snapshotter for volumes under dir: btrfs
// subvolumes when statfs says dir is on btrfs, the copying fallback
// otherwise.
func NewSnapshotter(dir string) (Snapshotter, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, fmt.Errorf("snapshotter: %w", &os.PathError{Op: "statfs", Path: dir, Err: err})
	}
	if onBtrfs(&st) {
		return btrfsSnapshotter{}, nil
	}
	return copySnapshotter{}, nil
}

// NewCopySnapshotter returns the copying Snapshotter whatever the
// filesystem: for trees that are not btrfs subvolumes even on btrfs.
func NewCopySnapshotter() Snapshotter { return copySnapshotter{} }

// btrfsSnapshotter keeps volumes as btrfs subvolumes.
type btrfsSnapshotter struct{}

var _ Snapshotter = btrfsSnapshotter{}

func (btrfsSnapshotter) String() string { return "btrfs" }

func (btrfsSnapshotter) Create(path string) error { return createSubvolume(path) }

func (btrfsSnapshotter) Snapshot(src, dst string, readonly bool) error {
	ok, err := isSubvolume(src)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if !ok {
		// The kernel would snapshot the whole subvolume holding src.
		return fmt.Errorf("snapshot %s: not a btrfs subvolume (make it with Create)", src)
	}
	return snapshotSubvolume(src, dst, readonly)
}

// Delete destroys a subvolume. When the kernel refuses because nested
// subvolumes remain, those are deleted first, depth first, and the
// deletion is tried again. A plain directory is removed like os.RemoveAll.
func (s btrfsSnapshotter) Delete(path string) error {
	ok, err := isSubvolume(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("delete: %w", err)
	case !ok:
		return os.RemoveAll(path)
	}
	err = destroySubvolume(path)
	if !errors.Is(err, unix.ENOTEMPTY) {
		return err
	}
	if err := s.deleteNested(path); err != nil {
		return fmt.Errorf("delete nested subvolumes of %s: %w", path, err)
	}
	return destroySubvolume(path)
}

// deleteNested deletes the subvolumes found inside the subvolume at top.
func (s btrfsSnapshotter) deleteNested(top string) error {
	return filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == top || !d.IsDir() {
			return err
		}
		ok, err := isSubvolume(p)
		if err != nil || !ok {
			return err
		}
		if err := s.Delete(p); err != nil {
			return err
		}
		return filepath.SkipDir
	})
}
