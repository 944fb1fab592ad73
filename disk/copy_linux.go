package disk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// copySnapshotter is the fallback for filesystems without snapshots: a
// volume is a directory and a snapshot is a copy of its tree, keeping
// modes, ownership, timestamps, symbolic links, hard links within the tree,
// device nodes, FIFOs and extended attributes (so ACLs, file capabilities
// and overlayfs' trusted.overlay.* marks); file flags are not copied. A copy is built beside its destination and renamed into place,
// so a crash leaves at worst a hidden ".<name>.partial-*" directory, never
// a half-made snapshot.
type copySnapshotter struct{}

var _ Snapshotter = copySnapshotter{}

func (copySnapshotter) String() string { return "copy" }

func (copySnapshotter) Create(path string) error { return os.Mkdir(path, 0o755) }

func (copySnapshotter) Snapshot(src, dst string, readonly bool) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("snapshot: %w", &os.PathError{Op: "lstat", Path: src, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("snapshot %s: not a directory", src)
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("snapshot %s: %w", dst, fs.ErrExist)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".partial-")
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := buildCopy(src, tmp, &st, readonly); err != nil {
		_ = removeTree(tmp)
		return fmt.Errorf("snapshot %s as %s: %w", src, dst, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		_ = removeTree(tmp)
		return fmt.Errorf("snapshot %s as %s: rename: %w", src, dst, err)
	}
	if readonly {
		// Last: an immutable directory cannot be renamed.
		if err := setImmutable(dst, true); err != nil {
			return fmt.Errorf("snapshot %s as %s: %w", src, dst, err)
		}
	}
	return nil
}

// buildCopy copies the tree src into the new directory tmp; readonly marks
// everything but tmp itself immutable.
func buildCopy(src, tmp string, st *unix.Stat_t, readonly bool) error {
	c := copier{links: map[fileID]string{}}
	if err := c.dir(src, tmp, st); err != nil {
		return err
	}
	if !readonly {
		return nil
	}
	return filepath.WalkDir(tmp, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == tmp || (!d.IsDir() && !d.Type().IsRegular()) {
			return err
		}
		return setImmutable(p, true)
	})
}

// Delete removes the tree, clearing immutable flags when they are in the way.
func (copySnapshotter) Delete(path string) error { return removeTree(path) }

// removeTree is os.RemoveAll that also removes read-only snapshots.
func removeTree(path string) error {
	err := os.RemoveAll(path)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && (d.IsDir() || d.Type().IsRegular()) {
			_ = setImmutable(p, false)
		}
		return nil
	})
	return os.RemoveAll(path)
}

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h (chattr +i).
const fsImmutableFL = 0x10

// setImmutable sets or clears the immutable flag of a file or directory.
func setImmutable(path string, on bool) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err == nil {
		want := flags &^ fsImmutableFL
		if on {
			want |= fsImmutableFL
		}
		if want == flags {
			return nil
		}
		err = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(want))
	}
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("read-only snapshot: %s: no immutable flag on this filesystem: %w", path, ErrNotSupported)
	}
	if err != nil {
		return fmt.Errorf("set immutable flag on %s: %w", path, err)
	}
	return nil
}

// fileID identifies an inode, to recreate hard links.
type fileID struct{ dev, ino uint64 }

// copier copies one tree; links maps inodes with several links to their
// first copy.
type copier struct{ links map[fileID]string }

// dir copies the entries of directory src into the existing directory dst,
// then gives dst the attributes in st (after the children, so that a
// read-only or dated directory ends up so).
func (c *copier) dir(src, dst string, st *unix.Stat_t) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := c.entry(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return setAttrs(src, dst, st)
}

// entry copies one file of any kind.
func (c *copier) entry(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return &os.PathError{Op: "lstat", Path: src, Err: err}
	}
	kind := st.Mode & unix.S_IFMT
	if kind == unix.S_IFDIR {
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
		return c.dir(src, dst, &st)
	}
	if st.Nlink > 1 {
		id := fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)}
		if first, ok := c.links[id]; ok {
			return os.Link(first, dst)
		}
		c.links[id] = dst
	}
	var err error
	switch kind {
	case unix.S_IFREG:
		err = copyFile(src, dst)
	case unix.S_IFLNK:
		var target string
		if target, err = os.Readlink(src); err == nil {
			err = os.Symlink(target, dst)
		}
	default: // device nodes, FIFOs, sockets
		err = unix.Mknod(dst, kind|0o600, int(st.Rdev))
		if err != nil {
			err = &os.PathError{Op: "mknod", Path: dst, Err: err}
		}
	}
	if err != nil {
		return err
	}
	return setAttrs(src, dst, &st)
}

// copyFile copies a regular file's content; on Linux io.Copy between files
// uses copy_file_range, which shares extents where the filesystem can.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// setAttrs gives path the owner, extended attributes, mode and timestamps
// of src (whose stat is st): owner first, since chown clears set-user-ID
// bits and file capabilities.
func setAttrs(src, path string, st *unix.Stat_t) error {
	if err := unix.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
		return &os.PathError{Op: "lchown", Path: path, Err: err}
	}
	if err := copyXattrs(src, path); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Fchmodat(unix.AT_FDCWD, path, st.Mode&0o7777, 0); err != nil {
			return &os.PathError{Op: "chmod", Path: path, Err: err}
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: path, Err: err}
	}
	return nil
}

// copyXattrs copies every extended attribute of src to dst, neither
// followed if a symbolic link. A source filesystem without them has none
// to copy.
func copyXattrs(src, dst string) error {
	names, err := listXattrs(src)
	if err != nil {
		return err
	}
	buf := make([]byte, 4096) // never empty: an empty buffer asks for the size
	for _, name := range names {
		value, err := getXattr(src, name, &buf)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return &os.PathError{Op: "getxattr " + name, Path: src, Err: err}
		}
		if err := unix.Lsetxattr(dst, name, value, 0); err != nil {
			return &os.PathError{Op: "setxattr " + name, Path: dst, Err: err}
		}
	}
	return nil
}

// getXattr reads one extended attribute into *buf, growing it as needed.
func getXattr(path, name string, buf *[]byte) ([]byte, error) {
	for {
		n, err := unix.Lgetxattr(path, name, *buf)
		if err == nil {
			return (*buf)[:n], nil
		}
		if !errors.Is(err, unix.ERANGE) {
			return nil, err
		}
		if n, err = unix.Lgetxattr(path, name, nil); err != nil {
			return nil, err
		}
		*buf = make([]byte, n+64)
	}
}

// listXattrs lists the names of path's extended attributes.
func listXattrs(path string) ([]string, error) {
	size, err := unix.Llistxattr(path, nil)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, &os.PathError{Op: "listxattr", Path: path, Err: err}
	}
	if size == 0 {
		return nil, nil
	}
	buf := make([]byte, size+256)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		return nil, &os.PathError{Op: "listxattr", Path: path, Err: err}
	}
	var names []string
	for _, name := range bytes.Split(buf[:n], []byte{0}) {
		if len(name) > 0 {
			names = append(names, string(name))
		}
	}
	return names, nil
}
