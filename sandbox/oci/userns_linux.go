package oci

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// usernsFile is a user namespace with m's mapping, as a file: what an
// idmapped mount is made with. The kernel makes user namespaces only with
// processes, so a child is started in a new one and stopped before it runs
// anything (as a tracee stops at its exec), and killed once its namespace
// is open. The runtime makes the sandbox's own namespace with the same
// mapping.
func usernsFile(m sandbox.IDMap) (*os.File, error) {
	maps := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(m.HostID), Size: int(m.Size)}}
	proc, err := os.StartProcess("/proc/self/exe", []string{"arcbox-userns"}, &os.ProcAttr{
		Sys: &syscall.SysProcAttr{
			Cloneflags:  unix.CLONE_NEWUSER,
			UidMappings: maps,
			GidMappings: maps,
			Ptrace:      true, // stop at the exec: nothing of it runs
			Pdeathsig:   unix.SIGKILL,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("a user namespace for %d-%d: %w", m.HostID, m.HostID+m.Size-1, err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", proc.Pid))
	_ = proc.Kill()
	_, _ = proc.Wait()
	if err != nil {
		return nil, fmt.Errorf("a user namespace for %d-%d: %w", m.HostID, m.HostID+m.Size-1, err)
	}
	return f, nil
}

// usernsResult is what usernsFile returned.
type usernsResult struct {
	f   *os.File
	err error
}

// usernsAhead is the user namespace made ahead of time for the range the
// next sandbox is likely to get (sandbox.StartRequest.NextIDMap), so that
// its start does not wait for the fork that makes one: a few milliseconds,
// and most of what a user namespace added to a create.
type usernsAhead struct {
	// newUserns makes one (nil: usernsFile).
	newUserns func(sandbox.IDMap) (*os.File, error)

	mu     sync.Mutex
	idmap  sandbox.IDMap
	c      <-chan usernsResult // nil: none is made ahead
	closed bool
}

// async makes m's user namespace in the background; the channel gets the
// result, which the receiver closes.
func (u *usernsAhead) async(m sandbox.IDMap) <-chan usernsResult {
	c := make(chan usernsResult, 1)
	go func() { c <- u.make(m) }()
	return c
}

func (u *usernsAhead) make(m sandbox.IDMap) usernsResult {
	newUserns := u.newUserns
	if newUserns == nil {
		newUserns = usernsFile
	}
	f, err := newUserns(m)
	return usernsResult{f, err}
}

// take returns a channel that gets idmap's user namespace (the receiver
// closes it): the one made ahead when it is for idmap, else one made now. One made ahead that
// failed is tried again: what failed then may not now.
func (u *usernsAhead) take(idmap sandbox.IDMap) <-chan usernsResult {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.c == nil || u.idmap != idmap {
		return u.async(idmap)
	}
	ahead, c := u.c, make(chan usernsResult, 1)
	u.c = nil
	go func() {
		r := <-ahead
		if r.err != nil {
			r = u.make(idmap)
		}
		c <- r
	}()
	return c
}

// prepare starts making idmap's user namespace ahead (none for a zero
// idmap), in place of one made for another range.
func (u *usernsAhead) prepare(idmap sandbox.IDMap) {
	if idmap.Size == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed || (u.c != nil && u.idmap == idmap) {
		return
	}
	dropUserns(u.c)
	u.idmap, u.c = idmap, u.async(idmap)
}

// close drops the namespace made ahead, and makes no more.
func (u *usernsAhead) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	dropUserns(u.c)
	u.c = nil
}

// dropUserns closes the namespace c gets (nil: none) once it has come.
func dropUserns(c <-chan usernsResult) {
	if c == nil {
		return
	}
	go func() {
		if r := <-c; r.f != nil {
			r.f.Close()
		}
	}()
}

// mountIDMapped mounts src on target (an existing directory) with the
// files' owners shifted by userns's mapping: a file of uid 0 in src is of
// the mapping's host id in target. Nothing is copied or changed in src.
// errNoIDMap says the file system of src cannot do it.
func mountIDMapped(src, target string, userns *os.File) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("clone the mount of %s: %w", src, err)
	}
	defer unix.Close(fd)
	// Read-only too: it is only ever a lower layer, and should an agent
	// die before unmounting it, it is no writable view of a shared image.
	attr := unix.MountAttr{
		Attr_set:  unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
		Userns_fd: uint64(userns.Fd()),
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("%s: %w (%w)", src, errNoIDMap, err)
		}
		return fmt.Errorf("idmap the mount of %s: %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach the idmapped mount of %s on %s: %w", src, target, err)
	}
	return nil
}

// errNoIDMap: the kernel or the file system has no idmapped mounts
// (tmpfs before Linux 6.3, for one).
var errNoIDMap = errors.New("idmapped mounts are not supported here")

// shiftOwners moves the owners of every file under root from the range
// starting at from to the one starting at to (size ids each), in place:
// for a sandbox's writable layer, made in one range and restored in
// another. Owners outside the old range are left as they are. Each inode
// is shifted once, however many links it has.
func shiftOwners(root string, from, to, size uint32) error {
	if from == to {
		return nil
	}
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	shift := func(id uint32) (uint32, bool) {
		if id < from || id-from >= size {
			return id, false
		}
		return id - from + to, true
	}
	return filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			key := inode{st.Dev, st.Ino}
			if seen[key] {
				return nil
			}
			seen[key] = true
		}
		uid, uok := shift(st.Uid)
		gid, gok := shift(st.Gid)
		if !uok && !gok {
			return nil
		}
		if err := unix.Lchown(p, int(uid), int(gid)); err != nil {
			return &os.PathError{Op: "lchown", Path: p, Err: err}
		}
		// chown clears the set-id bits of files; put them back.
		if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			if err := unix.Chmod(p, st.Mode&0o7777); err != nil {
				return &os.PathError{Op: "chmod", Path: p, Err: err}
			}
		}
		return nil
	})
}
