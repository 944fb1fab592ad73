package disk

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// btrfs ioctl arguments, laid out as in linux/btrfs.h.
type btrfsVolArgs struct { // struct btrfs_ioctl_vol_args
	fd   int64
	name [4088]byte
}

type btrfsVolArgsV2 struct { // struct btrfs_ioctl_vol_args_v2
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64
	name    [4040]byte
}

const (
	btrfsSubvolRdonly = 1 << 1 // BTRFS_SUBVOL_RDONLY
	btrfsFirstFreeID  = 256    // BTRFS_FIRST_FREE_OBJECTID: inode number of every subvolume's root
)

var (
	btrfsIocSubvolCreate = btrfsIOW(14, unsafe.Sizeof(btrfsVolArgs{}))   // BTRFS_IOC_SUBVOL_CREATE
	btrfsIocSnapDestroy  = btrfsIOW(15, unsafe.Sizeof(btrfsVolArgs{}))   // BTRFS_IOC_SNAP_DESTROY
	btrfsIocSnapCreateV2 = btrfsIOW(23, unsafe.Sizeof(btrfsVolArgsV2{})) // BTRFS_IOC_SNAP_CREATE_V2
)

// btrfsIOW encodes _IOW(BTRFS_IOCTL_MAGIC, nr, size). x/sys/unix has no
// btrfs ioctl numbers and the direction bits differ between architectures
// (bit 30 on most, bit 31 on mips, ppc and sparc), so they are taken from an
// _IOW number x/sys/unix does define. The size field starts at bit 16
// everywhere and our sizes fit in its 13 bits.
func btrfsIOW(nr, size uintptr) uint {
	const btrfsIoctlMagic = 0x94
	dirWrite := uint(unix.FS_IOC_SETFLAGS) &^ (1<<29 - 1)
	return dirWrite | uint(size)<<16 | btrfsIoctlMagic<<8 | uint(nr)
}

func ioctlPtr(fd uintptr, req uint, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// openParent opens the directory that holds path and returns it with the
// last element of path, checked to fit a btrfs name.
func openParent(path string, max int) (*os.File, string, error) {
	name := filepath.Base(path)
	if name == "." || name == ".." || name == "/" || len(name) >= max || strings.ContainsRune(name, 0) {
		return nil, "", fmt.Errorf("%s: not a valid subvolume name", path)
	}
	dir, err := os.OpenFile(filepath.Dir(path), os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, "", err
	}
	return dir, name, nil
}

// createSubvolume makes an empty subvolume at path (BTRFS_IOC_SUBVOL_CREATE).
func createSubvolume(path string) error {
	var args btrfsVolArgs
	dir, name, err := openParent(path, len(args.name))
	if err != nil {
		return fmt.Errorf("create subvolume: %w", err)
	}
	defer dir.Close()
	copy(args.name[:], name)
	if err := ioctlPtr(dir.Fd(), btrfsIocSubvolCreate, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("create subvolume %s: %w", path, err)
	}
	return nil
}

// snapshotSubvolume snapshots the subvolume src as dst, read-only if asked
// (BTRFS_IOC_SNAP_CREATE_V2). The kernel snapshots the subvolume that holds
// whatever src is, so callers check src is a subvolume's root first.
func snapshotSubvolume(src, dst string, readonly bool) error {
	var args btrfsVolArgsV2
	dir, name, err := openParent(dst, len(args.name))
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", src, err)
	}
	defer dir.Close()
	s, err := os.OpenFile(src, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer s.Close()
	args.fd = int64(s.Fd())
	if readonly {
		args.flags = btrfsSubvolRdonly
	}
	copy(args.name[:], name)
	if err := ioctlPtr(dir.Fd(), btrfsIocSnapCreateV2, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("snapshot %s as %s: %w", src, dst, err)
	}
	return nil
}

// destroySubvolume deletes the subvolume at path with everything in it
// (BTRFS_IOC_SNAP_DESTROY). The kernel refuses with ENOTEMPTY while nested
// subvolumes remain.
func destroySubvolume(path string) error {
	var args btrfsVolArgs
	dir, name, err := openParent(path, len(args.name))
	if err != nil {
		return fmt.Errorf("delete subvolume: %w", err)
	}
	defer dir.Close()
	copy(args.name[:], name)
	if err := ioctlPtr(dir.Fd(), btrfsIocSnapDestroy, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("delete subvolume %s: %w", path, err)
	}
	return nil
}

// isSubvolume reports whether path is the root of a btrfs subvolume.
func isSubvolume(path string) (bool, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return false, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	if !onBtrfs(&fs) {
		return false, nil
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && uint64(st.Ino) == btrfsFirstFreeID, nil
}

// onBtrfs reports whether statfs describes a btrfs. Statfs_t.Type is int32
// on some architectures, where the magic does not fit without conversion.
func onBtrfs(fs *unix.Statfs_t) bool { return uint32(fs.Type) == unix.BTRFS_SUPER_MAGIC }
