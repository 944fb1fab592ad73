package oci

// A live sandbox's files, reached from the agent (sandbox.FileTree): the
// sandbox's merged root (the overlay at <bundle>/rootfs), every path
// resolved under it with openat2(RESOLVE_IN_ROOT), every change made with
// *at calls on directories so opened, so no symlink, ".." or swap between
// a check and its use leads outside the root.
//
// The sandbox's own mounts (/proc, /dev, its bind mounts, ...) live in its
// mount namespace, which the agent does not enter: the agent would see the
// root filesystem's directory beneath each. So a path at or under one of
// them is refused (400, naming the mount), and listings and archives do not
// descend into them. RESOLVE_NO_XDEV refuses any other mount met on the
// way.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// filesResolve is how every path of the files API is resolved: in the
// sandbox's root, as the sandbox would, never through a magic link or
// onto another mount.
const filesResolve = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// Default modes of what the files API makes.
const (
	defaultFileMode = 0o644
	defaultDirMode  = 0o755
)

// tempPrefix starts the names of an upload's or extraction's temporary
// file or directory, beside its target.
const tempPrefix = ".arcbox-tmp-"

// fileTree is a sandbox's file tree for one request.
type fileTree struct {
	root *os.File // O_PATH, the merged root
	// rootPath is its path on the host, as the kernel gives it
	// (readlink of /proc/self/fd), so it compares with pathOf's.
	rootPath string
	log      *slog.Logger
	idmap    sandbox.IDMap
	readOnly string
	// mounts are the sandbox's mount points but /, as paths in it
	// (their symlinks resolved in the root), which the agent cannot see.
	mounts []string
}

// OpenFiles opens sandbox id's merged root.
func (b *Backend) OpenFiles(id string, r sandbox.FilesRequest) (sandbox.FileTree, error) {
	dir := b.bundle(id)
	fd, err := unix.Open(filepath.Join(dir, "rootfs"), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, sandbox.Errorf(sandbox.ErrConflict, "sandbox %q has no root filesystem: %w", id, err)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil || fs.Type != unix.OVERLAYFS_SUPER_MAGIC {
		unix.Close(fd)
		return nil, sandbox.Errorf(sandbox.ErrConflict, "sandbox %q: its root filesystem is not mounted", id)
	}
	// The path as the kernel resolved it, not as configured: the state
	// dir may be reached through a symlink.
	rootPath, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sandbox %q: the path of its root filesystem: %w", id, err)
	}
	t := &fileTree{root: os.NewFile(uintptr(fd), rootPath), rootPath: rootPath, log: b.log, idmap: r.IDMap, readOnly: r.ReadOnly}
	targets, err := b.mountTargets(id, dir)
	if err != nil {
		t.Close()
		return nil, err
	}
	for _, target := range targets {
		t.mounts = append(t.mounts, t.resolveTarget(target))
	}
	return t, nil
}

// mountTargets are the destinations of the mounts of sandbox id's spec
// (in its bundle dir), read once for each container it runs: the spec,
// with its seccomp profile most of a file request's work to parse, does
// not change while the container runs.
func (b *Backend) mountTargets(id, dir string) ([]string, error) {
	config := filepath.Join(dir, "config.json")
	b.mu.Lock()
	box := b.boxes[id]
	b.mu.Unlock()
	if box == nil {
		return readMountTargets(config)
	}
	box.mountsMu.Lock()
	defer box.mountsMu.Unlock()
	if box.mounts == nil {
		targets, err := readMountTargets(config)
		if err != nil {
			return nil, err
		}
		box.mounts = targets
	}
	return box.mounts, nil
}

// readMountTargets are the destinations of the mounts of a bundle's spec.
func readMountTargets(config string) ([]string, error) {
	data, err := os.ReadFile(config)
	if err != nil {
		return nil, fmt.Errorf("the sandbox's mounts: %w", err)
	}
	var spec struct {
		Mounts []specs.Mount `json:"mounts"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("the sandbox's mounts: %s: %w", config, err)
	}
	out := make([]string, 0, len(spec.Mounts))
	for _, m := range spec.Mounts {
		if d := path.Clean("/" + m.Destination); d != "/" {
			out = append(out, d)
		}
	}
	return out, nil
}

// resolveTarget is a mount point's path with its symlinks resolved in the
// root, as the runtime resolved it; as written when it cannot be opened.
func (t *fileTree) resolveTarget(target string) string {
	f, err := t.openRaw(target, unix.O_PATH)
	if err != nil {
		return target
	}
	defer f.Close()
	if p, err := t.pathOf(f); err == nil {
		return p
	}
	return target
}

func (t *fileTree) Close() error { return t.root.Close() }

// openRaw opens p under the root, following symlinks in it.
func (t *fileTree) openRaw(p string, flags int) (*os.File, error) {
	rel := strings.TrimPrefix(path.Clean(p), "/")
	if rel == "" {
		rel = "."
	}
	for {
		fd, err := unix.Openat2(int(t.root.Fd()), rel, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC),
			Resolve: filesResolve,
		})
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(fd), p), nil
	}
}

// open opens p (checked: CheckFilePath) under the root, following symlinks
// in it, and refuses what resolves to a mount point or under one.
func (t *fileTree) open(p string, flags int) (*os.File, error) {
	if err := t.checkPath(p); err != nil {
		return nil, err
	}
	f, err := t.openRaw(p, flags)
	if err != nil {
		// Not there, maybe because it is under a mount the agent
		// does not see (through a symlink to it): say so, if so.
		for dir := path.Dir(path.Clean(p)); dir != "/"; dir = path.Dir(dir) {
			if d, derr := t.openRaw(dir, unix.O_PATH); derr == nil {
				merr := t.checkResolved(p, d)
				d.Close()
				if merr != nil {
					return nil, merr
				}
				break
			}
		}
		return nil, pathErr(p, err)
	}
	if err := t.checkResolved(p, f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// parent opens the directory of p, with O_RDONLY (flock needs it), and
// returns the last component of p.
func (t *fileTree) parent(p string) (*os.File, string, error) {
	if err := t.checkPath(p); err != nil {
		return nil, "", err
	}
	p = path.Clean(p)
	if p == "/" {
		return nil, "", sandbox.InvalidField("path", "\"/\" is the sandbox's root directory, which this operation cannot take")
	}
	dirPath, name := path.Split(p)
	dir, err := t.open(dirPath, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, "", err
	}
	full, err := t.pathOf(dir)
	if err == nil {
		err = t.checkMounted(p, path.Join(full, name))
	}
	if err != nil {
		dir.Close()
		return nil, "", err
	}
	return dir, name, nil
}

// checkPath checks p's form and that it names no mount point or a path
// under one as written.
func (t *fileTree) checkPath(p string) error {
	if err := sandbox.CheckFilePath("path", p); err != nil {
		return err
	}
	return t.checkMounted(p, path.Clean(p))
}

// checkResolved refuses f, opened for p, when it is a mount point or
// under one.
func (t *fileTree) checkResolved(p string, f *os.File) error {
	real, err := t.pathOf(f)
	if err != nil {
		return err
	}
	return t.checkMounted(p, real)
}

// checkMounted refuses real (p, resolved) when it is at or under a mount.
func (t *fileTree) checkMounted(p, real string) error {
	if m := t.mountOver(real); m != "" {
		return sandbox.InvalidField("path", "%q is under %s, a mount of the sandbox's own that the files API cannot reach (the agent sees the root filesystem's directory beneath it); use a command in the sandbox for it", p, m)
	}
	return nil
}

// mountOver is the mount point at or above p, if there is one.
func (t *fileTree) mountOver(p string) string {
	for _, m := range t.mounts {
		if within(p, m) {
			return m
		}
	}
	return ""
}

// mountUnder is a mount point at or below p, if there is one.
func (t *fileTree) mountUnder(p string) string {
	for _, m := range t.mounts {
		if within(m, p) {
			return m
		}
	}
	return ""
}

// within reports whether p is dir or under it (both clean and absolute).
func within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// pathOf is where f is in the sandbox: its path below the root.
func (t *fileTree) pathOf(f *os.File) (string, error) {
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return "", err
	}
	if real == t.rootPath {
		return "/", nil
	}
	if rel, ok := strings.CutPrefix(real, t.rootPath+"/"); ok {
		return "/" + rel, nil
	}
	// Unmounted meanwhile (the sandbox is stopping), or deleted.
	return "", sandbox.Errorf(sandbox.ErrConflict, "%s is no longer in the sandbox's root filesystem (the sandbox is stopping, or the file was removed)", f.Name())
}

func (t *fileTree) writable() error {
	if t.readOnly != "" {
		return sandbox.Errorf(sandbox.ErrConflict, "%s", t.readOnly)
	}
	return nil
}

// pathErr classifies a system call's error on path p.
func pathErr(p string, err error) error {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return err
	}
	class := error(nil)
	switch errno {
	case unix.ENOENT:
		class = sandbox.ErrNotFound
	case unix.ENOTDIR, unix.ELOOP, unix.EXDEV, unix.EISDIR, unix.ENAMETOOLONG, unix.EINVAL:
		class = sandbox.ErrInvalid
	case unix.EEXIST, unix.ENOTEMPTY, unix.EBUSY, unix.EROFS, unix.EPERM, unix.EACCES, unix.ETXTBSY:
		class = sandbox.ErrConflict
	case unix.ENOSPC, unix.EDQUOT:
		class = sandbox.ErrNoSpace
	default:
		return fmt.Errorf("path %q: %w", p, err)
	}
	what := errno.Error()
	switch errno {
	case unix.ELOOP:
		what = "too many levels of symbolic links, or a symbolic link where there may be none"
	case unix.EXDEV:
		what = "it crosses a mount of the sandbox the files API cannot reach"
	}
	return sandbox.Errorf(class, "field %q: %q: %s", "path", p, what)
}

// fileType is the type of a stat mode.
func fileType(mode uint32) sandbox.FileType {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return sandbox.FileRegular
	case unix.S_IFDIR:
		return sandbox.FileDir
	case unix.S_IFLNK:
		return sandbox.FileSymlink
	case unix.S_IFIFO:
		return sandbox.FileFIFO
	case unix.S_IFSOCK:
		return sandbox.FileSocket
	case unix.S_IFCHR:
		return sandbox.FileCharDev
	case unix.S_IFBLK:
		return sandbox.FileBlockDev
	}
	return sandbox.FileUnknown
}

// info describes a file of stat st at p.
func (t *fileTree) info(p string, st *unix.Stat_t) sandbox.FileInfo {
	fi := sandbox.FileInfo{
		Path:    p,
		Type:    fileType(st.Mode),
		Size:    st.Size,
		Mode:    st.Mode & 0o7777,
		UID:     t.idmap.ToSandbox(st.Uid),
		GID:     t.idmap.ToSandbox(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()),
	}
	if fi.Type == sandbox.FileRegular {
		fi.ETag = etag(st)
	}
	return fi
}

// etag is a regular file's entity tag: its inode, size, and modification
// and change times, which a write through the files API (a new inode)
// or in place (the times) changes.
func etag(st *unix.Stat_t) string {
	return fmt.Sprintf(`"%x-%x-%x-%x"`, st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano())
}

// Stat describes p without following a symlink there.
func (t *fileTree) Stat(p string) (sandbox.FileInfo, error) {
	if path.Clean(p) == "/" {
		if err := t.checkPath(p); err != nil {
			return sandbox.FileInfo{}, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(t.root.Fd()), &st); err != nil {
			return sandbox.FileInfo{}, pathErr(p, err)
		}
		return t.info("/", &st), nil
	}
	dir, name, err := t.parent(p)
	if err != nil {
		return sandbox.FileInfo{}, err
	}
	defer dir.Close()
	return t.statAt(dir, name, path.Clean(p))
}

// statAt describes name in dir, known in the sandbox as p.
func (t *fileTree) statAt(dir *os.File, name, p string) (sandbox.FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return sandbox.FileInfo{}, pathErr(p, err)
	}
	fi := t.info(p, &st)
	if fi.Type == sandbox.FileSymlink {
		fi.LinkTarget, _ = readlinkAt(int(dir.Fd()), name)
	}
	return fi, nil
}

func readlinkAt(dirFD int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dirFD, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, len(buf)*4)
	}
}

// List lists the directory p down to depth levels.
func (t *fileTree) List(p string, depth, limit int) ([]sandbox.FileInfo, bool, error) {
	dir, err := t.open(p, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, false, err
	}
	defer dir.Close()
	real, err := t.pathOf(dir)
	if err != nil {
		return nil, false, err
	}
	l := lister{t: t, limit: limit, out: []sandbox.FileInfo{}}
	err = l.list(dir, path.Clean(p), real, depth)
	return l.out, l.truncated, err
}

type lister struct {
	t         *fileTree
	limit     int
	out       []sandbox.FileInfo
	truncated bool
}

// list adds the entries of dir (p as asked, real as resolved), and of
// its subdirectories down to depth levels.
func (l *lister) list(dir *os.File, p, real string, depth int) error {
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return pathErr(p, err)
	}
	slices.Sort(names)
	for _, name := range names {
		if len(l.out) >= l.limit {
			l.truncated = true
			return nil
		}
		fi, err := l.t.statAt(dir, name, path.Join(p, name))
		if errors.Is(err, sandbox.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return err
		}
		l.out = append(l.out, fi)
		childReal := path.Join(real, name)
		if fi.Type != sandbox.FileDir || depth <= 1 || l.t.mountOver(childReal) != "" {
			continue
		}
		sub, err := openChild(dir, name, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			continue // replaced or removed meanwhile
		}
		err = l.list(sub, fi.Path, childReal, depth-1)
		sub.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// openChild opens name, one component, in dir, never following a symlink.
func openChild(dir *os.File, name string, flags int) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path.Join(dir.Name(), name)), nil
}

// Open opens the regular file p for reading. It is first opened O_PATH,
// which has no effect on any kind of file, and checked; only then is that
// very inode opened for reading, so a FIFO or device swapped in is never
// opened for real.
func (t *fileTree) Open(p string) (*os.File, sandbox.FileInfo, error) {
	pf, err := t.open(p, unix.O_PATH)
	if err != nil {
		return nil, sandbox.FileInfo{}, err
	}
	defer pf.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(pf.Fd()), &st); err != nil {
		return nil, sandbox.FileInfo{}, pathErr(p, err)
	}
	if err := checkRegular(p, st.Mode); err != nil {
		return nil, sandbox.FileInfo{}, err
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", pf.Fd()), os.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, sandbox.FileInfo{}, pathErr(p, err)
	}
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, sandbox.FileInfo{}, pathErr(p, err)
	}
	return f, t.info(path.Clean(p), &st), nil
}

// checkRegular refuses what is not a regular file: reading or writing a
// FIFO, socket or device could block or act on the device.
func checkRegular(p string, mode uint32) error {
	switch typ := fileType(mode); typ {
	case sandbox.FileRegular:
		return nil
	case sandbox.FileDir:
		return sandbox.InvalidField("path", "%q is a directory; list it, or get it as an archive", p)
	default:
		return sandbox.InvalidField("path", "%q is a %s, not a regular file: the files API reads and writes regular files only", p, strings.ReplaceAll(string(typ), "_", " "))
	}
}

// Write replaces p with body through a temporary file beside it.
func (t *fileTree) Write(ctx context.Context, p string, body io.Reader, o sandbox.WriteOptions) (sandbox.FileInfo, bool, error) {
	if err := t.writable(); err != nil {
		return sandbox.FileInfo{}, false, err
	}
	dir, name, err := t.parent(p)
	if err != nil {
		return sandbox.FileInfo{}, false, err
	}
	defer dir.Close()
	p = path.Clean(p)
	mode, uid, gid, err := t.owner(o.Mode, o.UID, o.GID, defaultFileMode)
	if err != nil {
		return sandbox.FileInfo{}, false, err
	}
	var old unix.Stat_t
	err = unix.Fstatat(int(dir.Fd()), name, &old, unix.AT_SYMLINK_NOFOLLOW)
	exists := err == nil
	switch {
	case err != nil && !errors.Is(err, unix.ENOENT):
		return sandbox.FileInfo{}, false, pathErr(p, err)
	case exists && o.CreateOnly:
		return sandbox.FileInfo{}, false, sandbox.Errorf(sandbox.ErrPrecondition, "%q exists (If-None-Match: *)", p)
	case exists && fileType(old.Mode) != sandbox.FileSymlink:
		if err := checkRegular(p, old.Mode); err != nil {
			return sandbox.FileInfo{}, false, err
		}
		// A replacement keeps what it is not told.
		if o.Mode == nil {
			mode = old.Mode & 0o7777
		}
		if o.UID == nil {
			uid = old.Uid
		}
		if o.GID == nil {
			gid = old.Gid
		}
	}
	if err := checkIfMatch(p, o.IfMatch, &old, exists); err != nil {
		return sandbox.FileInfo{}, false, err
	}
	tmp, tmpName, err := createTemp(dir, p)
	if err != nil {
		return sandbox.FileInfo{}, false, err
	}
	committed := false
	defer func() {
		tmp.Close()
		if !committed {
			_ = unix.Unlinkat(int(dir.Fd()), tmpName, 0)
		}
	}()
	if err := copyLimited(tmp, body, o.Limit); err != nil {
		return sandbox.FileInfo{}, false, pathErr(p, err)
	}
	// chown first: it clears the setuid and setgid bits.
	if err := unix.Fchown(int(tmp.Fd()), int(uid), int(gid)); err != nil {
		return sandbox.FileInfo{}, false, pathErr(p, err)
	}
	if err := unix.Fchmod(int(tmp.Fd()), mode); err != nil {
		return sandbox.FileInfo{}, false, pathErr(p, err)
	}
	if err := t.commit(ctx, dir, tmpName, name, p, o); err != nil {
		return sandbox.FileInfo{}, false, err
	}
	committed = true
	var st unix.Stat_t
	if err := unix.Fstat(int(tmp.Fd()), &st); err != nil {
		return sandbox.FileInfo{}, false, pathErr(p, err)
	}
	return t.info(p, &st), !exists, nil
}

// commit renames the written temporary file over name: without replacing
// anything for CreateOnly, and for IfMatch with the directory locked
// (flock) while the tag is checked again, so two conditional writes of
// the agent cannot both win.
func (t *fileTree) commit(ctx context.Context, dir *os.File, tmpName, name, p string, o sandbox.WriteOptions) error {
	dfd := int(dir.Fd())
	if o.CreateOnly {
		err := unix.Renameat2(dfd, tmpName, dfd, name, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EEXIST) {
			return sandbox.Errorf(sandbox.ErrPrecondition, "%q exists (If-None-Match: *)", p)
		}
		return pathErr(p, err)
	}
	if o.IfMatch != "" {
		if err := lockDir(ctx, dfd); err != nil {
			return fmt.Errorf("lock the directory of %q: %w", p, err)
		}
		defer func() { _ = unix.Flock(dfd, unix.LOCK_UN) }()
		var st unix.Stat_t
		err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return pathErr(p, err)
		}
		if err := checkIfMatch(p, o.IfMatch, &st, err == nil); err != nil {
			return err
		}
	}
	return pathErr(p, unix.Renameat(dfd, tmpName, dfd, name))
}

// lockDir takes the directory's flock, waiting for it until ctx ends.
func lockDir(ctx context.Context, fd int) error {
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// checkIfMatch checks an If-Match list against the file now at p.
func checkIfMatch(p, ifMatch string, st *unix.Stat_t, exists bool) error {
	if ifMatch == "" {
		return nil
	}
	if exists && fileType(st.Mode) == sandbox.FileRegular {
		now := etag(st)
		for tag := range strings.SplitSeq(ifMatch, ",") {
			if tag = strings.TrimSpace(tag); tag == "*" || tag == now {
				return nil
			}
		}
		return sandbox.Errorf(sandbox.ErrPrecondition, "%q has changed: its ETag is %s, not %s (If-Match)", p, now, ifMatch)
	}
	return sandbox.Errorf(sandbox.ErrPrecondition, "%q is no regular file now (If-Match %s)", p, ifMatch)
}

// createTemp makes an empty temporary file in dir, readable by root only
// until it is complete.
func createTemp(dir *os.File, p string) (*os.File, string, error) {
	for {
		name := tempName()
		fd, err := unix.Openat(int(dir.Fd()), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, "", pathErr(p, err)
		}
		return os.NewFile(uintptr(fd), name), name, nil
	}
}

func tempName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return tempPrefix + hex.EncodeToString(b[:])
}

// copyBufSize is the buffer an upload is copied through: big reads keep
// the copy's system calls few.
const copyBufSize = 1 << 20

// copyLimited copies body to f, refusing more than limit bytes.
func copyLimited(f *os.File, body io.Reader, limit int64) error {
	buf := make([]byte, copyBufSize)
	// Hide f's ReadFrom, whose generic path reads 32 KiB at a time.
	n, err := io.CopyBuffer(struct{ io.Writer }{f}, io.LimitReader(body, limit+1), buf)
	if err != nil {
		var perr *os.PathError
		if errors.As(err, &perr) {
			return err // the file's, classified by the caller
		}
		return sandbox.Errorf(sandbox.ErrInvalid, "read the request body: %w", err)
	}
	if n > limit {
		return sandbox.Errorf(sandbox.ErrTooLarge, "the upload is over its limit of %d bytes", limit)
	}
	return nil
}

// owner is the mode and host owner of a new file or directory.
func (t *fileTree) owner(mode, uid, gid *uint32, defMode uint32) (m, u, g uint32, err error) {
	m = defMode
	if mode != nil {
		if *mode > 0o7777 {
			return 0, 0, 0, sandbox.InvalidField("mode", "%#o has bits past 07777", *mode)
		}
		m = *mode
	}
	if u, err = t.idmap.ToHost("uid", deref(uid)); err != nil {
		return 0, 0, 0, err
	}
	if g, err = t.idmap.ToHost("gid", deref(gid)); err != nil {
		return 0, 0, 0, err
	}
	return m, u, g, nil
}

func deref(p *uint32) uint32 {
	if p == nil {
		return 0
	}
	return *p
}

// Mkdir makes the directory p.
func (t *fileTree) Mkdir(p string, o sandbox.MkdirOptions) (sandbox.FileInfo, bool, error) {
	if err := t.writable(); err != nil {
		return sandbox.FileInfo{}, false, err
	}
	mode, uid, gid, err := t.owner(o.Mode, o.UID, o.GID, defaultDirMode)
	if err != nil {
		return sandbox.FileInfo{}, false, err
	}
	if o.Parents {
		if err := t.checkPath(p); err != nil {
			return sandbox.FileInfo{}, false, err
		}
		if err := t.mkdirParents(path.Dir(path.Clean(p)), mode, uid, gid); err != nil {
			return sandbox.FileInfo{}, false, err
		}
	}
	dir, name, err := t.parent(p)
	if err != nil {
		return sandbox.FileInfo{}, false, err
	}
	defer dir.Close()
	p = path.Clean(p)
	created, err := mkdirAt(dir, name, p, mode, uid, gid)
	if err != nil {
		if o.Parents && errors.Is(err, unix.EEXIST) {
			fi, serr := t.statAt(dir, name, p)
			if serr == nil && fi.Type == sandbox.FileDir {
				return fi, false, nil
			}
		}
		return sandbox.FileInfo{}, false, pathErr(p, err)
	}
	fi, err := t.statAt(dir, name, p)
	return fi, created, err
}

// mkdirParents makes dir and its missing parents, as mkdir -p does.
func (t *fileTree) mkdirParents(dir string, mode, uid, gid uint32) error {
	if dir == "/" {
		return nil
	}
	if f, err := t.open(dir, unix.O_PATH|unix.O_DIRECTORY); err == nil {
		f.Close()
		return nil
	}
	if err := t.mkdirParents(path.Dir(dir), mode, uid, gid); err != nil {
		return err
	}
	parent, name, err := t.parent(dir)
	if err != nil {
		return err
	}
	defer parent.Close()
	if _, err := mkdirAt(parent, name, dir, mode, uid, gid); err != nil && !errors.Is(err, unix.EEXIST) {
		return pathErr(dir, err)
	}
	return nil
}

// mkdirAt makes name in dir (p in the sandbox) with mode and owner. The
// owner and mode are set through the new directory, opened without
// following a symlink: the sandbox can swap the name for a symlink
// between the calls, whose target the agent would resolve on the host.
func mkdirAt(dir *os.File, name, p string, mode, uid, gid uint32) (bool, error) {
	if err := unix.Mkdirat(int(dir.Fd()), name, 0o700); err != nil {
		return false, err
	}
	d, err := openChild(dir, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENOENT) {
		return true, sandbox.Errorf(sandbox.ErrConflict, "field %q: %q was replaced or removed in the sandbox while it was being made; its owner and mode are not set", "path", p)
	}
	if err != nil {
		return true, err
	}
	defer d.Close()
	if err := unix.Fchown(int(d.Fd()), int(uid), int(gid)); err != nil {
		return true, err
	}
	// Fchmod: the umask narrowed Mkdirat's mode, and chown cleared
	// setgid.
	return true, unix.Fchmod(int(d.Fd()), mode)
}

// Remove removes p.
func (t *fileTree) Remove(p string, recursive bool) error {
	if err := t.writable(); err != nil {
		return err
	}
	dir, name, err := t.parent(p)
	if err != nil {
		return err
	}
	defer dir.Close()
	p = path.Clean(p)
	var st unix.Stat_t
	if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathErr(p, err)
	}
	if fileType(st.Mode) != sandbox.FileDir {
		return pathErr(p, unix.Unlinkat(int(dir.Fd()), name, 0))
	}
	real, err := t.pathOf(dir)
	if err != nil {
		return err
	}
	// Removing a directory the sandbox has a mount on would detach its
	// mount.
	if m := t.mountUnder(path.Join(real, name)); m != "" {
		return sandbox.InvalidField("path", "%q holds %s, a mount of the sandbox's own; it cannot be removed from outside", p, m)
	}
	if !recursive {
		err := unix.Unlinkat(int(dir.Fd()), name, unix.AT_REMOVEDIR)
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return sandbox.Errorf(sandbox.ErrConflict, "field %q: %q is a directory that is not empty; remove it with recursive=true", "path", p)
		}
		return pathErr(p, err)
	}
	return pathErr(p, removeAllAt(dir, name))
}

// removeAllAt removes name in dir and, if it is a directory, everything
// in it, never following a symlink.
func removeAllAt(dir *os.File, name string) error {
	err := unix.Unlinkat(int(dir.Fd()), name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	sub, err := openChild(dir, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	names, err := sub.Readdirnames(-1)
	for _, n := range names {
		if err == nil {
			err = removeAllAt(sub, n)
		}
	}
	sub.Close()
	if err != nil {
		return err
	}
	err = unix.Unlinkat(int(dir.Fd()), name, unix.AT_REMOVEDIR)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}
