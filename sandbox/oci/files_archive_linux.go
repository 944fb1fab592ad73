package oci

// A sandbox's directory as a tar stream, out and in (sandbox.FileTree's
// WriteArchive and ExtractArchive).

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// beneath resolves the paths of an extraction's temporary directory and
// target: below the directory, through no symlink and onto no mount.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV

// WriteArchive writes the directory p to w as a tar stream.
func (t *fileTree) WriteArchive(w io.Writer, p string) error {
	dir, err := t.open(p, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer dir.Close()
	real, err := t.pathOf(dir)
	if err != nil {
		return err
	}
	a := archiver{t: t, tw: tar.NewWriter(w), links: map[[2]uint64]string{}, buf: make([]byte, copyBufSize)}
	if err := a.dir(dir, "", real); err != nil {
		return err
	}
	return a.tw.Close()
}

type archiver struct {
	t     *fileTree
	tw    *tar.Writer
	links map[[2]uint64]string // device and inode of a file written, its name
	buf   []byte
}

// dir writes the entries of dir (named prefix in the archive, real in the
// sandbox), but the sandbox's mount points and sockets.
func (a *archiver) dir(dir *os.File, prefix, real string) error {
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, name := range names {
		rel, childReal := path.Join(prefix, name), path.Join(real, name)
		if a.t.mountOver(childReal) != "" {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed meanwhile
			}
			return err
		}
		if err := a.entry(dir, name, rel, childReal, &st); err != nil {
			return fmt.Errorf("%s: %w", childReal, err)
		}
	}
	return nil
}

func (a *archiver) entry(dir *os.File, name, rel, real string, st *unix.Stat_t) error {
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(a.t.idmap.ToSandbox(st.Uid)),
		Gid:     int(a.t.idmap.ToSandbox(st.Gid)),
		ModTime: time.Unix(st.Mtim.Unix()),
	}
	switch fileType(st.Mode) {
	case sandbox.FileDir:
		hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
		if err := a.tw.WriteHeader(hdr); err != nil {
			return err
		}
		sub, err := openChild(dir, name, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer sub.Close()
		return a.dir(sub, rel, real)
	case sandbox.FileRegular:
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := a.links[key]; ok {
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
			return a.tw.WriteHeader(hdr)
		}
		if st.Nlink > 1 {
			a.links[key] = rel
		}
		return a.file(dir, name, hdr)
	case sandbox.FileSymlink:
		target, err := readlinkAt(int(dir.Fd()), name)
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
	case sandbox.FileFIFO:
		hdr.Typeflag = tar.TypeFifo
	case sandbox.FileCharDev, sandbox.FileBlockDev:
		hdr.Typeflag = tar.TypeChar
		if fileType(st.Mode) == sandbox.FileBlockDev {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	default:
		return nil // a socket has no place in a tar
	}
	return a.tw.WriteHeader(hdr)
}

// file writes a regular file's header and contents. It is opened without
// following a symlink and without blocking, and checked to be the file
// that was stat'ed.
func (a *archiver) file(dir *os.File, name string, hdr *tar.Header) error {
	f, err := openChild(dir, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if fileType(st.Mode) != sandbox.FileRegular {
		return fmt.Errorf("replaced by a %s while archived", fileType(st.Mode))
	}
	hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size
	if err := a.tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.CopyBuffer(a.tw, io.LimitReader(f, st.Size), a.buf)
	if err == nil && n < st.Size {
		err = fmt.Errorf("it shrank from %d to %d bytes while archived", st.Size, n)
	}
	return err
}

// ExtractArchive extracts the tar stream r into the directory p: into a
// temporary directory inside p first (which only the agent may enter),
// checking every entry; then, once the whole archive is there, its
// entries are renamed into p, merging into directories p has. A refused
// entry or a stream past limit leaves nothing.
func (t *fileTree) ExtractArchive(p string, r io.Reader, limit int64) error {
	if err := t.writable(); err != nil {
		return err
	}
	dir, err := t.open(p, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer dir.Close()
	real, err := t.pathOf(dir)
	if err != nil {
		return err
	}
	tmpName := tempName()
	if err := unix.Mkdirat(int(dir.Fd()), tmpName, 0o700); err != nil {
		return pathErr(p, err)
	}
	tmp, err := openChild(dir, tmpName, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		// Swapped already: the name is the sandbox's now.
		t.log.Warn("files: the temporary directory of an archive extraction is left", "path", path.Join(real, tmpName), "err", err)
		return pathErr(p, err)
	}
	defer t.removeTemp(dir, tmp, tmpName, path.Join(real, tmpName))
	x := &extractor{t: t, tmp: tmp, target: dir, real: real, explicit: map[string]*tar.Header{}, buf: make([]byte, copyBufSize), left: limit}
	body := &limitedBody{r: r, left: limit}
	tr := tar.NewReader(body)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if body.over {
			return sandbox.Errorf(sandbox.ErrTooLarge, "the archive is over its limit of %d bytes", limit)
		}
		if err != nil {
			return sandbox.InvalidField("body", "not a readable tar stream: %v", err)
		}
		if err := x.entry(hdr, tr); err != nil {
			if body.over {
				return sandbox.Errorf(sandbox.ErrTooLarge, "the archive is over its limit of %d bytes", limit)
			}
			return err
		}
	}
	if err := x.dirsMeta(); err != nil {
		return err
	}
	return x.merge(tmp, dir, "", real)
}

// removeTemp removes an extraction's temporary directory tmp, named
// tmpName in dir (real in the sandbox), and closes it. Its contents go
// through tmp itself; its name, which the sandbox could have swapped for
// one of its own directories, only while it still names tmp.
func (t *fileTree) removeTemp(dir, tmp *os.File, tmpName, real string) {
	defer tmp.Close()
	// A descriptor of its own: tmp's read offset is past its entries.
	fresh, err := openChild(tmp, ".", unix.O_RDONLY|unix.O_DIRECTORY)
	if err == nil {
		var names []string
		names, err = fresh.Readdirnames(-1)
		for _, n := range names {
			if err == nil {
				err = removeAllAt(fresh, n)
			}
		}
		fresh.Close()
	}
	var want, now unix.Stat_t
	if err == nil {
		err = unix.Fstat(int(tmp.Fd()), &want)
	}
	if err == nil {
		err = unix.Fstatat(int(dir.Fd()), tmpName, &now, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err == nil && (now.Dev != want.Dev || now.Ino != want.Ino) {
		err = errors.New("the name is no longer the agent's directory; left alone")
	}
	if err == nil {
		err = unix.Unlinkat(int(dir.Fd()), tmpName, unix.AT_REMOVEDIR)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		t.log.Warn("files: the temporary directory of an archive extraction is left", "path", real, "err", err)
	}
}

// limitedBody reads at most left bytes of r, and notes a read past them.
type limitedBody struct {
	r    io.Reader
	left int64
	over bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a stream at its limit from one past it.
		var one [1]byte
		n, err := b.r.Read(one[:])
		if n > 0 {
			b.over = true
			return 0, sandbox.ErrTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

type extractor struct {
	t      *fileTree
	tmp    *os.File // the temporary directory, in target
	target *os.File // the directory extracted into
	real   string   // target's path in the sandbox
	// explicit are the directories the archive has entries for, by name,
	// whose modes, owners and times are set once the rest is in.
	explicit map[string]*tar.Header
	buf      []byte
	// left is what the files may still take of the limit: a sparse
	// entry's size is what it writes, not what the stream holds.
	left int64
}

// entryErr is a refused entry: a 400 naming it.
func entryErr(name, format string, args ...any) error {
	return sandbox.InvalidField("body", "archive entry %q: %s", name, fmt.Sprintf(format, args...))
}

// checkName checks a name of the archive (an entry's, or a hard link's
// target) and returns it clean, "." for the directory itself.
func checkName(entry, name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", entryErr(entry, "%q is absolute; an archive's names are relative to the directory it is extracted in", name)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", entryErr(entry, "%q holds a NUL byte", name)
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == ".." {
			return "", entryErr(entry, "%q has a \"..\" component, which would lead out of the directory", name)
		}
	}
	return path.Clean(name), nil
}

func (x *extractor) entry(hdr *tar.Header, body io.Reader) error {
	name, err := checkName(hdr.Name, hdr.Name)
	if err != nil {
		return err
	}
	if name == "." || hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // the directory itself keeps what it has
	}
	if m := x.t.mountOver(path.Join(x.real, name)); m != "" {
		return entryErr(hdr.Name, "it would go at or under %s, a mount of the sandbox's own the files API cannot reach", m)
	}
	if hdr.Uid < 0 || hdr.Gid < 0 {
		return entryErr(hdr.Name, "negative owner %d:%d", hdr.Uid, hdr.Gid)
	}
	uid, err := x.t.idmap.ToHost("body", uint32(hdr.Uid))
	if err != nil {
		return entryErr(hdr.Name, "uid %d is outside the sandbox's user namespace", hdr.Uid)
	}
	gid, err := x.t.idmap.ToHost("body", uint32(hdr.Gid))
	if err != nil {
		return entryErr(hdr.Name, "gid %d is outside the sandbox's user namespace", hdr.Gid)
	}
	if hdr.Typeflag != tar.TypeDir {
		if err := x.checkReplace(hdr.Name, name); err != nil {
			return err
		}
	}
	parentName, base := path.Split(name)
	parent, err := x.mkdirs(hdr.Name, parentName)
	if err != nil {
		return err
	}
	defer parent.Close()
	pfd := int(parent.Fd())
	if hdr.Typeflag != tar.TypeDir || !isDirAt(pfd, base) {
		// A name given twice: the last entry wins, as with tar.
		if err := removeAllAt(parent, base); err != nil {
			return entryErr(hdr.Name, "%v", err)
		}
	}
	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return entryErr(hdr.Name, "%v", err)
		}
		x.explicit[name] = hdr
		return nil
	case tar.TypeReg:
		if hdr.Size > x.left {
			return sandbox.Errorf(sandbox.ErrTooLarge, "archive entry %q: its %d bytes would take the extracted files over the archive's limit", hdr.Name, hdr.Size)
		}
		x.left -= hdr.Size
		err = x.file(pfd, base, body)
	case tar.TypeSymlink:
		if err := checkSymlink(hdr.Name, name, hdr.Linkname); err != nil {
			return err
		}
		err = unix.Symlinkat(hdr.Linkname, pfd, base)
	case tar.TypeLink:
		err = x.link(hdr, pfd, base)
	case tar.TypeFifo:
		err = unix.Mknodat(pfd, base, unix.S_IFIFO|mode, 0)
	case tar.TypeChar, tar.TypeBlock:
		return entryErr(hdr.Name, "device nodes are not extracted into a sandbox")
	default:
		return entryErr(hdr.Name, "entries of type %q are not supported", hdr.Typeflag)
	}
	if err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return sandbox.Classify(sandbox.ErrNoSpace, fmt.Errorf("archive entry %q: %w", hdr.Name, err))
		}
		if errors.Is(err, sandbox.ErrInvalid) || errors.Is(err, sandbox.ErrTooLarge) {
			return err
		}
		return entryErr(hdr.Name, "%v", err)
	}
	if hdr.Typeflag == tar.TypeLink {
		return nil // the same inode as its target: nothing more to set
	}
	if err := unix.Fchownat(pfd, base, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return entryErr(hdr.Name, "%v", err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		// chown cleared setuid and setgid: the mode goes after it.
		if err := chmodAt(pfd, base, mode); err != nil {
			return entryErr(hdr.Name, "%v", err)
		}
	}
	return setMtime(pfd, base, hdr.ModTime)
}

// chmodAt sets the mode of name in dirFD through a descriptor of it
// opened without following a symlink (chmod has no such flag before
// fchmodat2): a symlink swapped in is refused, never followed.
func chmodAt(dirFD int, name string, mode uint32) error {
	fd, err := unix.Openat(dirFD, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("replaced by a symlink while extracted: %w", unix.ELOOP)
	}
	// An O_PATH descriptor takes no fchmod; its /proc link reaches
	// that very inode.
	return unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), mode)
}

// file writes a regular file's contents from the archive.
func (x *extractor) file(dirFD int, base string, body io.Reader) error {
	fd, err := unix.Openat(dirFD, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	_, err = io.CopyBuffer(struct{ io.Writer }{f}, body, x.buf)
	return err
}

// link makes base in dirFD a hard link to an earlier entry of the archive.
func (x *extractor) link(hdr *tar.Header, dirFD int, base string) error {
	target, err := checkName(hdr.Name, hdr.Linkname)
	if err != nil {
		return err
	}
	if target == "." {
		return entryErr(hdr.Name, "a hard link to the directory itself")
	}
	tdir, tbase := path.Split(target)
	td, err := x.openTmp(tdir, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil {
		err = unix.Linkat(int(td.Fd()), tbase, dirFD, base, 0)
		td.Close()
	}
	if err != nil {
		return entryErr(hdr.Name, "a hard link to %q, which is no earlier file of the archive (%v)", hdr.Linkname, err)
	}
	return nil
}

// checkSymlink refuses a relative symlink that leads out of the directory
// extracted into. An absolute one stays: the sandbox, and the files API,
// resolve it in the sandbox's root, which it cannot leave.
func checkSymlink(entry, name, target string) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return entryErr(entry, "symlink target %q is empty or holds a NUL byte", target)
	}
	if path.IsAbs(target) {
		return nil
	}
	if resolved := path.Join(path.Dir(name), target); resolved == ".." || strings.HasPrefix(resolved, "../") {
		return entryErr(entry, "symlink target %q leads out of the directory extracted into", target)
	}
	return nil
}

// checkReplace refuses an entry that would replace a directory of the
// target with something else: merging cannot do that without removing
// what is in it.
func (x *extractor) checkReplace(entry, name string) error {
	dirName, base := path.Split(name)
	d, err := openBeneath(x.target, dirName, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return nil // nothing there, or a symlink or file, which the entry's directories replace
	}
	defer d.Close()
	if isDirAt(int(d.Fd()), base) {
		return entryErr(entry, "%s is a directory; an archive entry cannot replace it with a file", path.Join(x.real, name))
	}
	return nil
}

func isDirAt(dirFD int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dirFD, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// openBeneath opens name below dir, through no symlink.
func openBeneath(dir *os.File, name string, flags int) (*os.File, error) {
	if name = strings.Trim(name, "/"); name == "" {
		name = "."
	}
	for {
		fd, err := unix.Openat2(int(dir.Fd()), name, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: beneath})
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(fd), name), nil
	}
}

func (x *extractor) openTmp(name string, flags int) (*os.File, error) {
	return openBeneath(x.tmp, name, flags)
}

// mkdirs opens the directory name of the temporary directory, making it
// and its parents (0755, the sandbox's root's) where the archive has not.
func (x *extractor) mkdirs(entry, name string) (*os.File, error) {
	name = strings.Trim(name, "/")
	if d, err := x.openTmp(name, unix.O_PATH|unix.O_DIRECTORY); err == nil {
		return d, nil
	}
	cur, err := x.openTmp(".", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	root, _ := x.t.idmap.ToHost("uid", 0)
	for c := range strings.SplitSeq(name, "/") {
		if c == "" {
			continue
		}
		err := unix.Mkdirat(int(cur.Fd()), c, defaultDirMode)
		if err == nil {
			err = unix.Fchownat(int(cur.Fd()), c, int(root), int(root), unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			cur.Close()
			return nil, entryErr(entry, "%v", err)
		}
		next, err := openBeneath(cur, c, unix.O_PATH|unix.O_DIRECTORY)
		cur.Close()
		if err != nil {
			return nil, entryErr(entry, "%q in its path is no directory of the archive (%v)", c, err)
		}
		cur = next
	}
	return cur, nil
}

// dirsMeta gives the archive's directories their modes, owners and
// times, deepest first, now that nothing more is written into them.
func (x *extractor) dirsMeta() error {
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range x.explicit {
			if !yield(n) {
				return
			}
		}
	})
	for _, name := range slices.Backward(names) {
		d, err := x.openTmp(name, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			continue // replaced by a later entry
		}
		err = x.setDirMeta(d, x.explicit[name])
		d.Close()
		if err != nil {
			return entryErr(x.explicit[name].Name, "%v", err)
		}
	}
	return nil
}

func (x *extractor) setDirMeta(d *os.File, hdr *tar.Header) error {
	uid, _ := x.t.idmap.ToHost("uid", uint32(hdr.Uid))
	gid, _ := x.t.idmap.ToHost("gid", uint32(hdr.Gid))
	fd := int(d.Fd())
	if err := unix.Fchown(fd, int(uid), int(gid)); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode)&0o7777); err != nil {
		return err
	}
	return setMtime(fd, "", hdr.ModTime)
}

// setMtime sets the modification time of name in dirFD (of dirFD itself
// when name is empty), leaving the access time.
func setMtime(dirFD int, name string, mtime time.Time) error {
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(mtime.UnixNano())}
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags = unix.AT_EMPTY_PATH
	}
	return unix.UtimesNanoAt(dirFD, name, ts, flags)
}

// merge moves the entries of src (the archive's name prefix) into dst
// (real in the sandbox): a new name is renamed in, a directory of both is
// merged, a file replaces a file atomically.
func (x *extractor) merge(src, dst *os.File, prefix, real string) error {
	names, err := src.Readdirnames(-1)
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, name := range names {
		if err := x.mergeOne(src, dst, name, path.Join(prefix, name), path.Join(real, name)); err != nil {
			return pathErr(path.Join(real, name), err)
		}
	}
	return nil
}

func (x *extractor) mergeOne(src, dst *os.File, name, rel, real string) error {
	sfd, dfd := int(src.Fd()), int(dst.Fd())
	srcDir := isDirAt(sfd, name)
	var st unix.Stat_t
	err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return unix.Renameat(sfd, name, dfd, name)
	case err != nil:
		return err
	case srcDir && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		s, err := openChild(src, name, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer s.Close()
		d, err := openChild(dst, name, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer d.Close()
		if hdr := x.explicit[rel]; hdr != nil {
			if err := x.setDirMeta(d, hdr); err != nil {
				return err
			}
		}
		return x.merge(s, d, rel, real)
	case srcDir:
		if err := unix.Unlinkat(dfd, name, 0); err != nil {
			return err
		}
		return unix.Renameat(sfd, name, dfd, name)
	default:
		return unix.Renameat(sfd, name, dfd, name)
	}
}
