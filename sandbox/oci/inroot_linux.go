package oci

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// resolveInRoot makes every path resolution stay inside the root, the way
// the sandbox itself would see it: an untrusted root filesystem's symlinks
// (/etc/passwd -> /host/secret, say) never lead the agent outside it.
const resolveInRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// openInRoot opens name (a path as the sandbox sees it) under root.
func openInRoot(root, name string, flags int) (*os.File, error) {
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rootFD)
	return openat2(rootFD, root, name, flags)
}

func openat2(dirFD int, root, name string, flags int) (*os.File, error) {
	rel := strings.TrimPrefix(path.Clean("/"+name), "/")
	if rel == "" {
		rel = "."
	}
	for {
		fd, err := unix.Openat2(dirFD, rel, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC),
			Resolve: resolveInRoot,
		})
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path.Join(root, rel), Err: err}
		}
		return os.NewFile(uintptr(fd), path.Join(root, rel)), nil
	}
}

// readFileInRoot reads a small file of the sandbox's root filesystem.
func readFileInRoot(root, name string) ([]byte, error) {
	// O_NONBLOCK: the workload may have made it a FIFO, whose open
	// would otherwise wait for a writer, and hold the agent, forever.
	f, err := openInRoot(root, name, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w", name, errNotRegular)
	}
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

// mkdirAllInRoot makes dir (a path as the sandbox sees it) and its parents
// under root, with mode perm, owned by uid and gid (-1: the agent's).
func mkdirAllInRoot(root, dir string, perm uint32, uid, gid int) error {
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rootFD)
	return mkdirAllAt(rootFD, root, dir, perm, uid, gid)
}

// mkdirAllAt is mkdirAllInRoot under an open root.
func mkdirAllAt(rootFD int, root, dir string, perm uint32, uid, gid int) error {
	parts := strings.Split(strings.Trim(path.Clean("/"+dir), "/"), "/")
	for i := range parts {
		if parts[i] == "" {
			continue
		}
		prefix := path.Join(parts[:i+1]...)
		if f, err := openat2(rootFD, root, prefix, unix.O_PATH|unix.O_DIRECTORY); err == nil {
			f.Close()
			continue
		}
		parent, err := openat2(rootFD, root, path.Join(parts[:i]...), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		err = unix.Mkdirat(int(parent.Fd()), parts[i], perm)
		if err == nil && (uid >= 0 || gid >= 0) {
			err = unix.Fchownat(int(parent.Fd()), parts[i], uid, gid, unix.AT_SYMLINK_NOFOLLOW)
		}
		parent.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return &os.PathError{Op: "mkdir", Path: path.Join(root, prefix), Err: err}
		}
		f, err := openat2(rootFD, root, prefix, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}
