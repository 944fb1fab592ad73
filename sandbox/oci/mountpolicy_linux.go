package oci

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// resolveBeneath resolves a path under a directory the way the agent may
// follow it for a sandbox: symlinks only while they stay beneath it, never
// a /proc magic link.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS

// forbiddenPath is a host path no sandbox may mount, nor a directory
// holding it.
type forbiddenPath struct {
	path, why string
}

// mountPolicy says which host paths a sandbox may bind-mount: those under
// a mount root or under its own volume directory, and none that is, is
// inside, or holds a forbidden path. Every check is made twice: on the
// path as asked (Validate, for a clear 400), and on the file the agent
// opened, resolved beneath its root without leaving it through a symlink
// (Start). The runtime binds that open file, so nothing swapped into the
// path between the check and the mount is ever mounted.
type mountPolicy struct {
	roots     []string // real paths: no symlink in them
	forbidden []forbiddenPath
	volumes   string // StateDir/volumes, real: a sandbox's own is volumes/<id>
	// aliases maps a root or the state dir as configured to its real
	// path, where they differ, so sources given the configured way work.
	aliases map[string]string
}

func newMountPolicy(cfg Config) *mountPolicy {
	p := &mountPolicy{aliases: map[string]string{}}
	// A root or state dir given through a symlink is taken by its real
	// path, and the path as given kept as an alias of it.
	resolve := func(path string) string {
		path = filepath.Clean(path)
		real := realPath(path)
		if real != path {
			p.aliases[path] = real
		}
		return real
	}
	p.volumes = filepath.Join(resolve(cfg.StateDir), "volumes")
	roots := cfg.MountRoots
	if roots == nil {
		roots = DefaultMountRoots()
	}
	for _, r := range roots {
		if filepath.IsAbs(r) {
			p.roots = append(p.roots, resolve(r))
		}
	}
	add := func(why string, paths ...string) {
		for _, f := range paths {
			if f != "" && filepath.IsAbs(f) {
				f = filepath.Clean(f)
				p.forbidden = append(p.forbidden, forbiddenPath{f, why})
				if real := realPath(f); real != f {
					p.forbidden = append(p.forbidden, forbiddenPath{real, why})
				}
			}
		}
	}
	add("the agent's state", cfg.StateDir)
	add("the agent's own files", cfg.ForbiddenPaths...)
	add("the container runtimes' sockets and state",
		"/run/containerd", "/var/run/containerd", "/run/docker.sock", "/var/run/docker.sock", "/run/docker",
		"/var/lib/docker", "/var/lib/containerd", "/run/runc", "/run/crun")
	add("kernel file systems", "/proc", "/sys", "/dev")
	return p
}

// source is a mount's source as the policy sees it: clean, with a
// configured root or state dir that is a symlink replaced by its real path.
func (p *mountPolicy) source(m sandbox.Mount) string {
	src := filepath.Clean(m.Source)
	for asked, real := range p.aliases {
		if disk.Within(src, asked) {
			rel, _ := filepath.Rel(asked, src)
			return filepath.Join(real, rel)
		}
	}
	return src
}

// DefaultMountRoots are the mount roots when none are configured: the
// VirtioFS shares of the host, wherever they are mounted.
func DefaultMountRoots() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var roots []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source super
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && i > 4 {
				if fields[i+1] == "virtiofs" {
					roots = append(roots, unescapeMountinfo(fields[4]))
				}
				break
			}
		}
	}
	return roots
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// rootOf is the directory sandbox id's mount source src (clean, absolute)
// lies under: its own volume directory, or a mount root.
func (p *mountPolicy) rootOf(id, src string) (string, error) {
	if id != "" {
		if own := filepath.Join(p.volumes, id); disk.Within(src, own) {
			return own, nil
		}
	}
	for _, r := range p.roots {
		if disk.Within(src, r) {
			return r, nil
		}
	}
	if len(p.roots) == 0 {
		return "", fmt.Errorf("%s is not under a mount root, and the agent has none (set --sandbox-mount-root); a sandbox may also mount from its own volume directory %s", src, filepath.Join(p.volumes, "<id>"))
	}
	return "", fmt.Errorf("%s is not under a mount root (%s) nor the sandbox's own volume directory %s",
		src, strings.Join(p.roots, ", "), filepath.Join(p.volumes, "<id>"))
}

// refuse says why src (clean, absolute, real) may never be mounted, or
// returns nil. The sandbox's own volume directory is inside the state dir
// and is the one exception to it.
func (p *mountPolicy) refuse(id, src string) error {
	own := ""
	if id != "" {
		own = filepath.Join(p.volumes, id)
	}
	for _, f := range p.forbidden {
		if own != "" && disk.Within(src, own) && disk.Within(own, f.path) && f.path != own {
			continue // the state dir holds the sandbox's own volume directory
		}
		switch {
		case disk.Within(src, f.path):
			return fmt.Errorf("%s is %s (%s): never mountable", src, f.why, f.path)
		case disk.Within(f.path, src):
			return fmt.Errorf("%s holds %s (%s): never mountable", src, f.why, f.path)
		}
	}
	return nil
}

// validate checks mount i of sandbox id as a create asks it: the path,
// then what it resolves to, as open would (but for a path in the
// sandbox's own volume directory, which open makes).
func (p *mountPolicy) validate(i int, id string, m sandbox.Mount) error {
	if err := p.check(i, id, m); err != nil {
		return err
	}
	src := p.source(m)
	root, _ := p.rootOf(id, src)
	if id != "" && root == filepath.Join(p.volumes, id) {
		return nil
	}
	f, err := p.resolve(fmt.Sprintf("mounts[%d].source", i), root, src, id)
	if err != nil {
		return err
	}
	return f.Close()
}

// check checks mount i of sandbox id as asked, without opening it.
func (p *mountPolicy) check(i int, id string, m sandbox.Mount) error {
	field := fmt.Sprintf("mounts[%d].source", i)
	if !filepath.IsAbs(m.Source) {
		return sandbox.InvalidField(field, "%q is not an absolute path", m.Source)
	}
	src := p.source(m)
	if !filepath.IsAbs(src) {
		return sandbox.InvalidField(field, "%q is not an absolute path", m.Source)
	}
	if err := p.refuse(id, src); err != nil {
		return sandbox.InvalidField(field, "%v", err)
	}
	if _, err := p.rootOf(id, src); err != nil {
		return sandbox.InvalidField(field, "%v", err)
	}
	return nil
}

// open opens mount i's source (O_PATH) for the runtime to bind: resolved
// beneath its root, never through a symlink that leaves it, a directory
// or a regular file, and checked again by where it really is. A missing
// path under the sandbox's own volume directory is made, owned by the
// sandbox's root (uid, gid).
func (p *mountPolicy) open(i int, id string, m sandbox.Mount, uid, gid int) (*os.File, error) {
	if err := p.check(i, id, m); err != nil {
		return nil, err
	}
	field := fmt.Sprintf("mounts[%d].source", i)
	src := p.source(m)
	root, _ := p.rootOf(id, src)
	if own := filepath.Join(p.volumes, id); root == own {
		if err := os.MkdirAll(p.volumes, 0o711); err != nil {
			return nil, err
		}
		if err := os.Mkdir(own, 0o700); err == nil {
			if err := os.Chown(own, uid, gid); err != nil {
				return nil, err
			}
		} else if !errors.Is(err, os.ErrExist) {
			return nil, err
		}
		rel, _ := filepath.Rel(own, src)
		if err := mkdirAllInRoot(own, rel, 0o755, uid, gid); err != nil {
			return nil, sandbox.InvalidField(field, "%v", err)
		}
	}
	return p.resolve(field, root, src, id)
}

// resolve opens src (O_PATH) beneath root, refusing a symlink that leads
// out of it, anything but a directory or a regular file, and a file
// whose real path is forbidden. Errors name field.
func (p *mountPolicy) resolve(field, root, src, id string) (*os.File, error) {
	// The root itself is a real path: a symlink swapped in for it (or
	// for a directory above it) is refused, not followed.
	rootFD, err := unix.Openat2(unix.AT_FDCWD, root, &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, sandbox.InvalidField(field, "mount root %s: %v", root, err)
	}
	defer unix.Close(rootFD)
	rel, _ := filepath.Rel(root, src)
	var fd int
	for {
		fd, err = unix.Openat2(rootFD, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: resolveBeneath})
		if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			break
		}
	}
	if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ELOOP) {
		return nil, sandbox.InvalidField(field, "%s leads out of its mount root %s through a symlink", src, root)
	}
	if err != nil {
		return nil, sandbox.InvalidField(field, "%v", &os.PathError{Op: "open", Path: src, Err: err})
	}
	f := os.NewFile(uintptr(fd), src)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, err
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFDIR && t != unix.S_IFREG {
		f.Close()
		return nil, sandbox.InvalidField(field, "%s is not a directory or a regular file; only those are mountable", src)
	}
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err == nil && !disk.Within(filepath.Clean(real), root) {
		err = fmt.Errorf("%s is %s, outside its mount root %s", src, real, root)
	}
	if err == nil {
		err = p.refuse(id, filepath.Clean(real))
	}
	if err != nil {
		f.Close()
		return nil, sandbox.InvalidField(field, "%v", err)
	}
	return f, nil
}

// checkRootfs checks a create's rootfs: a directory of the agent's own
// store (StateDir/rootfs), reached without leaving it through a symlink.
// It returns the directory's real path.
func checkRootfs(store, dir string) (string, error) {
	clean := filepath.Clean(dir)
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("%q is not an absolute path", dir)
	}
	if clean == store || !disk.Within(clean, store) {
		return "", fmt.Errorf("%s is not in the agent's root filesystem store %s; a rootfs must be a directory in it", dir, store)
	}
	rel, _ := filepath.Rel(store, clean)
	rootFD, err := unix.Openat2(unix.AT_FDCWD, store, &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return "", &os.PathError{Op: "open", Path: store, Err: err}
	}
	defer unix.Close(rootFD)
	fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolveBeneath})
	if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ELOOP) {
		return "", fmt.Errorf("%s leads out of the store %s through a symlink", dir, store)
	}
	if err != nil {
		return "", &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", err
	}
	if !disk.Within(real, store) {
		return "", fmt.Errorf("%s is %s, outside the store %s", dir, real, store)
	}
	if strings.ContainsAny(real, ",:\\") {
		return "", fmt.Errorf("%q holds one of , : \\ (overlayfs options cannot)", real)
	}
	return real, nil
}
