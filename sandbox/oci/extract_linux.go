package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// extractTar unpacks a flattened image (mutate.Extract: whiteouts already
// applied) into root. Every path is resolved inside root, so an image's
// symlinks or ".." never lead a write outside it. Device nodes are
// skipped: the runtime makes the sandbox's /dev.
func extractTar(r io.Reader, root string) error {
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rootFD)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read image tar: %w", err)
		}
		rel := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if rel == "" {
			continue // the root itself
		}
		dir, base := path.Split(rel)
		if err := mkdirAllAt(rootFD, root, dir, 0o755, -1, -1); err != nil {
			return err
		}
		parent, err := openat2(rootFD, root, dir, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		err = extractEntry(rootFD, root, int(parent.Fd()), base, hdr, tr)
		parent.Close()
		if err != nil {
			return fmt.Errorf("unpack %s: %w", rel, err)
		}
	}
}

func extractEntry(rootFD int, root string, dirFD int, base string, hdr *tar.Header, r io.Reader) error {
	mode := uint32(hdr.Mode) & 0o7777
	uid, gid := hdr.Uid, hdr.Gid
	switch hdr.Typeflag {
	case tar.TypeDir:
		var st unix.Stat_t
		if err := unix.Fstatat(dirFD, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := unix.Unlinkat(dirFD, base, 0); err != nil {
				return err
			}
		}
		if err := unix.Mkdirat(dirFD, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		if err := unix.Fchownat(dirFD, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		return unix.Fchmodat(dirFD, base, mode, 0)
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // TypeRegA: old archives still use it.
		if err := removeEntry(dirFD, base); err != nil {
			return err
		}
		fd, err := unix.Openat(dirFD, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), base)
		defer f.Close()
		if _, err := io.CopyN(f, r, hdr.Size); err != nil {
			return err
		}
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return err
		}
		if err := unix.Fchmod(fd, mode); err != nil { // after chown, which clears setuid
			return err
		}
		for k, v := range hdr.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if err := unix.Fsetxattr(fd, name, []byte(v), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
					return fmt.Errorf("xattr %s: %w", name, err)
				}
			}
		}
		if err := f.Close(); err != nil {
			return err
		}
		return setTimes(dirFD, base, hdr)
	case tar.TypeSymlink:
		if err := removeEntry(dirFD, base); err != nil {
			return err
		}
		if err := unix.Symlinkat(hdr.Linkname, dirFD, base); err != nil {
			return err
		}
		if err := unix.Fchownat(dirFD, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		return setTimes(dirFD, base, hdr)
	case tar.TypeLink:
		target := strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")
		tdir, tbase := path.Split(target)
		if tbase == "" {
			return fmt.Errorf("hard link to %q", hdr.Linkname)
		}
		tparent, err := openat2(rootFD, root, tdir, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer tparent.Close()
		if err := removeEntry(dirFD, base); err != nil {
			return err
		}
		return unix.Linkat(int(tparent.Fd()), tbase, dirFD, base, 0)
	case tar.TypeFifo:
		if err := removeEntry(dirFD, base); err != nil {
			return err
		}
		if err := unix.Mknodat(dirFD, base, unix.S_IFIFO|mode, 0); err != nil {
			return err
		}
		return unix.Fchownat(dirFD, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	default:
		// Devices (the runtime makes /dev), and headers that are not files.
		return nil
	}
}

// removeEntry clears the way for a new entry: a file, link or empty dir.
func removeEntry(dirFD int, base string) error {
	err := unix.Unlinkat(dirFD, base, 0)
	if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EPERM) {
		err = unix.Unlinkat(dirFD, base, unix.AT_REMOVEDIR)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

func setTimes(dirFD int, base string, hdr *tar.Header) error {
	mtime := unix.NsecToTimespec(hdr.ModTime.UnixNano())
	atime := mtime
	if !hdr.AccessTime.IsZero() {
		atime = unix.NsecToTimespec(hdr.AccessTime.UnixNano())
	}
	err := unix.UtimesNanoAt(dirFD, base, []unix.Timespec{atime, mtime}, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	return err
}
