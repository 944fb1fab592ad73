package portwatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSource finds the sandboxes' namespaces in NetnsDir and reads
// listeners with sock_diag. An inotify watch on the directory says when
// to read it again, so an idle scan costs one read(2) that finds nothing
// on top of the dumps. A file that is there but not (yet) a namespace (the
// network setup creates it empty, then bind-mounts the namespace on it)
// is looked at again every scan until it is one or is gone.
type kernelSource struct {
	dir     string
	dirPath []byte // dir, NUL-terminated, for inotify_add_watch without allocating
	log     *slog.Logger
	buf     []byte // sock_diag replies, for every socket

	inotify int    // inotify fd, -1 if dir is ""
	wd      int    // the watch on dir, -1 while there is none (no dir yet, or it went)
	events  []byte // inotify read buffer
	dirty   bool   // dir may have changed since it was last read

	known   map[string]nsIdentity // namespaces handed to the watcher
	pending map[string]string     // entries not watched yet, with the error last logged for each

	ungatedLogged bool // a namespace without readable counters was logged
}

// nsIdentity tells one namespace from another behind the same file name.
type nsIdentity struct{ dev, ino uint64 }

var _ source = (*kernelSource)(nil)

func newKernelSource(cfg Config, log *slog.Logger) (source, error) {
	k := &kernelSource{
		dir:     cfg.NetnsDir,
		log:     log,
		buf:     make([]byte, replyBufSize),
		inotify: -1,
		wd:      -1,
		known:   map[string]nsIdentity{},
		pending: map[string]string{},
	}
	if k.dir == "" {
		return k, nil
	}
	p, err := unix.ByteSliceFromString(k.dir)
	if err != nil {
		return nil, fmt.Errorf("netns dir %q: %w", k.dir, err)
	}
	k.dirPath = p
	k.inotify, err = unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify for netns dir %s: %w", k.dir, err)
	}
	k.events = make([]byte, 4096)
	return k, nil
}

func (k *kernelSource) guest() (dumper, error) {
	n, err := newNsSockets(k.buf)
	if err != nil {
		return nil, fmt.Errorf("guest namespace: %w", err)
	}
	k.checkGated(n, "")
	return n, nil
}

// checkGated logs, once, a namespace whose counters cannot be read: it
// works, at the cost of a dump every scan.
func (k *kernelSource) checkGated(n *nsSockets, id string) {
	if !n.gated() && !k.ungatedLogged {
		k.log.Info("no socket counters under /proc/thread-self/net; dumping every scan", "sandbox", id)
		k.ungatedLogged = true
	}
}

func (k *kernelSource) close() {
	if k.inotify >= 0 {
		unix.Close(k.inotify)
	}
}

// watchMask is what changes the set of names in dir, or dir itself.
const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

func (k *kernelSource) sync(appeared func(string, dumper), went func(string)) error {
	if k.dir == "" {
		return nil
	}
	if k.wd < 0 {
		wd, err := k.addWatch()
		if errors.Is(err, unix.ENOENT) {
			k.forgetAll(went) // no directory, no sandbox: it is made with the first one
			return nil
		}
		if err != nil {
			return fmt.Errorf("watch %s: %w", k.dir, err)
		}
		k.wd, k.dirty = wd, true
	}
	k.readEvents()
	if k.dirty {
		return k.rescan(appeared, went)
	}
	for id := range k.pending {
		k.check(id, appeared, went)
	}
	return nil
}

// addWatch is inotify_add_watch(2) on dir, without the allocation of the
// x/sys wrapper: while the directory does not exist it is tried every scan.
func (k *kernelSource) addWatch() (int, error) {
	wd, _, errno := unix.Syscall(unix.SYS_INOTIFY_ADD_WATCH, uintptr(k.inotify),
		uintptr(unsafe.Pointer(&k.dirPath[0])), watchMask)
	if errno != 0 {
		return -1, errno
	}
	return int(wd), nil
}

// readEvents drains the inotify queue. Any event marks dir dirty; the
// watch ending (dir removed, or moved away from its path) also drops the
// watch, to be made again on the path.
func (k *kernelSource) readEvents() {
	for {
		n, err := unix.Read(k.inotify, k.events)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			if err != nil && !errors.Is(err, unix.EAGAIN) {
				k.log.Warn("read inotify events", "dir", k.dir, "err", err)
				k.dirty = true
			}
			return
		}
		k.dirty = true
		for b := k.events[:n]; len(b) >= unix.SizeofInotifyEvent; {
			wd := int(int32(binary.NativeEndian.Uint32(b[0:])))
			mask := binary.NativeEndian.Uint32(b[4:])
			nameLen := binary.NativeEndian.Uint32(b[12:])
			switch {
			case wd != k.wd:
				// An event of a watch already dropped.
			case mask&unix.IN_IGNORED != 0:
				k.wd = -1
			case mask&unix.IN_MOVE_SELF != 0:
				// Watching the directory under its new name is no use;
				// the watch on the path is made again next scan. A watch
				// already gone (EINVAL) is as good as removed.
				_, _ = unix.InotifyRmWatch(k.inotify, uint32(k.wd))
				k.wd = -1
			}
			b = b[min(uint64(unix.SizeofInotifyEvent)+uint64(nameLen), uint64(len(b))):]
		}
	}
}

// rescan reads dir whole and brings the watched namespaces in line with it.
func (k *kernelSource) rescan(appeared func(string, dumper), went func(string)) error {
	entries, err := os.ReadDir(k.dir)
	if errors.Is(err, fs.ErrNotExist) {
		k.dirty = false
		k.forgetAll(went)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read netns dir: %w", err)
	}
	k.dirty = false
	present := make(map[string]bool, len(entries))
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		present[e.Name()] = true
		k.check(e.Name(), appeared, went)
	}
	for id := range k.known {
		if !present[id] {
			delete(k.known, id)
			went(id)
		}
	}
	for id := range k.pending {
		if !present[id] {
			delete(k.pending, id)
		}
	}
	return nil
}

// forgetAll ends the watch of every sandbox namespace.
func (k *kernelSource) forgetAll(went func(string)) {
	for id := range k.known {
		delete(k.known, id)
		went(id)
	}
	clear(k.pending)
}

// check looks at dir/id: a namespace not watched yet is opened and handed
// to appeared; one replaced by another is handed to went first; one gone
// is handed to went; anything else is left pending.
func (k *kernelSource) check(id string, appeared func(string, dumper), went func(string)) {
	fd, err := unix.Open(filepath.Join(k.dir, id), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ENOENT) {
		delete(k.pending, id)
		k.forget(id, went)
		return
	}
	if err != nil {
		k.setPending(id, fmt.Errorf("open: %w", err))
		return
	}
	defer unix.Close(fd)
	ident, ok, err := nsfsIdentity(fd)
	if err != nil {
		k.setPending(id, err)
		return
	}
	if !ok { // not mounted yet, or unmounted on the way out
		k.forget(id, went)
		k.pending[id] = ""
		return
	}
	if old, ok := k.known[id]; ok {
		if old == ident {
			delete(k.pending, id)
			return
		}
		k.forget(id, went)
	}
	n, err := newNsSocketsIn(fd, k.buf)
	if err != nil {
		k.setPending(id, err)
		return
	}
	k.checkGated(n, id)
	delete(k.pending, id)
	k.known[id] = ident
	appeared(id, n)
}

// forget hands id to went if it was watched.
func (k *kernelSource) forget(id string, went func(string)) {
	if _, ok := k.known[id]; ok {
		delete(k.known, id)
		went(id)
	}
}

// setPending keeps id for the next scan, logging err unless it was the
// last one logged for id.
func (k *kernelSource) setPending(id string, err error) {
	msg := err.Error()
	if k.pending[id] != msg {
		k.log.Warn("cannot watch sandbox namespace; retrying every scan", "sandbox", id, "err", err)
	}
	k.pending[id] = msg
}

// nsfsIdentity tells whether fd is a namespace file (a bind mount of
// nsfs) and, if it is, which namespace.
func nsfsIdentity(fd int) (nsIdentity, bool, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return nsIdentity{}, false, fmt.Errorf("statfs: %w", err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return nsIdentity{}, false, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nsIdentity{}, false, fmt.Errorf("stat: %w", err)
	}
	return nsIdentity{dev: st.Dev, ino: st.Ino}, true, nil
}
