package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/sandbox/network"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// How long the backend waits for a sandbox's init to end.
const (
	initTermTimeout = 5 * time.Second // after SIGTERM, before SIGKILL
	initKillTimeout = 5 * time.Second // after SIGKILL
	runtimeTimeout  = 60 * time.Second
)

// Files of a bundle directory the backend owns (the record is the manager's).
const (
	bundleMetaFile = "backend.json"
	runtimeLogFile = "runtime.log"
	initPidFile    = "init.pid"
	// layerDir holds the overlay's upper and work directories: the
	// sandbox's writable layer, and what a snapshot keeps of it.
	layerDir = "layer"
)

// ociBackend runs sandboxes as OCI containers through runc or crun.
type ociBackend struct {
	log           *slog.Logger
	rt            *runc.Runc
	runtimeName   string // "runc" or "crun", for messages
	boxesDir      string // StateDir/sandboxes: bundles live in <boxesDir>/<id>
	initPath      string
	defaultRootfs string
	busybox       string
	cgroupParent  string
	cgroup2       bool
	images        *imageStore
	// snap makes writable layers and snapshots: btrfs subvolumes when the
	// state directory is on btrfs, directories and copies otherwise.
	snap disk.Snapshotter
	net  *network.Manager // bridge networking
	// mounts says which host paths sandboxes may bind-mount.
	mounts *mountPolicy
	// rootfsStore is the only directory a create's rootfs may name a
	// directory of (StateDir/rootfs, its real path; rootfsAsked as
	// configured).
	rootfsStore, rootfsAsked string
	// noIDMapOnce logs once that the state dir cannot be idmapped.
	noIDMapOnce sync.Once
	// usernsErr says why sandboxes with a user namespace cannot start
	// here, if they cannot.
	usernsErr error
	// noPivot: / is an initramfs, where pivot_root fails; the runtime
	// chroots into a sandbox's root instead.
	noPivot bool

	mu    sync.Mutex
	boxes map[string]*ociBox
	seq   uint64
}

var _ backend = (*ociBackend)(nil)

// ociBox is what the backend knows of a running sandbox.
type ociBox struct {
	init *pidWatch
	ns   string // the init's pid namespace
	meta bundleMeta
}

// bundleMeta is what a sandbox was made from, kept in backend.json so
// processes started after an agent restart get the same defaults.
type bundleMeta struct {
	Lower string      `json:"lower"` // the overlay's read-only layer
	Image imageConfig `json:"image"`
	// IDMap is the range of the sandbox's user namespace, which its
	// writable layer's files are owned in; zero without one.
	IDMap IDMap `json:"id_map,omitzero"`
}

func newOCIBackend(ctx context.Context, cfg Config) (backend, error) {
	log := cfg.Logger.With("component", "sandbox-oci")
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("sandboxes need root (overlay mounts, the OCI runtime): %w", ErrUnavailable)
	}
	path, name, err := findRuntime(cfg.Runtime)
	if err != nil {
		return nil, err
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(vctx, path, "--version").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s --version: %w: %s: %w", path, err, bytes.TrimSpace(out), ErrUnavailable)
	}
	initPath := cfg.InitPath
	if initPath == "" {
		if initPath, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("init binary: %w: %w", err, ErrUnavailable)
		}
	}
	if err := checkStatic(initPath); err != nil {
		return nil, fmt.Errorf("init binary: %w: %w", err, ErrUnavailable)
	}
	if strings.ContainsAny(cfg.StateDir, ",:\\") {
		return nil, fmt.Errorf("state dir %q holds one of , : \\ (overlayfs options cannot): %w", cfg.StateDir, ErrUnavailable)
	}
	niceRuntime()
	images, err := newImageStore(context.WithoutCancel(ctx), filepath.Join(cfg.StateDir, "images"), log, cfg)
	if err != nil {
		return nil, fmt.Errorf("images: %w: %w", err, ErrUnavailable)
	}
	rtRoot := filepath.Join(cfg.StateDir, "runtime")
	for _, d := range []string{rtRoot, filepath.Join(cfg.StateDir, "sandboxes"), filepath.Join(cfg.StateDir, "snapshots")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w: %w", err, ErrUnavailable)
		}
	}
	usernsErr := searchableByAll(filepath.Join(cfg.StateDir, "sandboxes"), cfg.StateDir)
	if usernsErr != nil {
		log.Error("sandboxes with a user namespace cannot start", "err", usernsErr)
	}
	snap, err := disk.NewSnapshotter(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrUnavailable)
	}
	netMgr, err := network.New(network.Config{
		CIDR:       cfg.BridgeCIDR,
		Bridge:     cfg.Bridge,
		NetnsDir:   filepath.Join(cfg.StateDir, "netns"),
		ResolvConf: cfg.ResolvConf,
	})
	if err != nil {
		return nil, fmt.Errorf("sandbox network: %w: %w", err, ErrUnavailable)
	}
	b := &ociBackend{
		log:           log,
		rt:            &runc.Runc{Command: path, Root: rtRoot},
		runtimeName:   name,
		boxesDir:      filepath.Join(cfg.StateDir, "sandboxes"),
		initPath:      initPath,
		defaultRootfs: cfg.DefaultRootfs,
		busybox:       cfg.BusyboxPath,
		cgroupParent:  cfg.CgroupParent,
		cgroup2:       isCgroup2("/sys/fs/cgroup"),
		images:        images,
		snap:          snap,
		net:           netMgr,
		mounts:        newMountPolicy(cfg),
		usernsErr:     usernsErr,
		rootfsStore:   realPath(filepath.Join(cfg.StateDir, "rootfs")),
		rootfsAsked:   filepath.Join(filepath.Clean(cfg.StateDir), "rootfs"),
		noPivot:       disk.RootIsInitramfs(),
		boxes:         map[string]*ociBox{},
	}
	if n := markInheritedCloexec(); n > 0 {
		log.Warn("marked inherited file descriptors close-on-exec, so no runtime or sandbox gets them", "count", n)
	}
	if err := EnsureBusyboxRootfs(b.defaultRootfs, b.busybox); err != nil {
		// Only sandboxes without an image or rootfs need it: they fail
		// to create, saying why; the others work.
		log.Warn("no default root filesystem", "dir", b.defaultRootfs, "err", err)
	}
	log.Info("sandbox backend ready", "runtime", path, "cgroup2", b.cgroup2, "init", initPath, "layers", snap, "no_pivot", b.noPivot)
	return b, nil
}

// checkRootfs is checkRootfs in the backend's store, which dir may name
// as configured or by its real path.
func (b *ociBackend) checkRootfs(dir string) (string, error) {
	if clean := filepath.Clean(dir); b.rootfsAsked != b.rootfsStore && within(clean, b.rootfsAsked) {
		rel, _ := filepath.Rel(b.rootfsAsked, clean)
		dir = filepath.Join(b.rootfsStore, rel)
	}
	return checkRootfs(b.rootfsStore, dir)
}

// realPath is path with its symlinks resolved, if it exists, else path.
func realPath(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		return real
	}
	return filepath.Clean(path)
}

// searchableByAll makes the agent's own directories from dir up to top
// searchable by every user (0711: passable, not listable), and checks that
// the directories above top are too: the root of a sandbox with a user
// namespace is no user the host knows, and the runtime makes its mounts
// as that root, through this path.
func searchableByAll(dir, top string) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		mode := st.Mode().Perm()
		if mode&0o001 == 0 {
			if !within(d, top) {
				return fmt.Errorf("%s (mode %#o) is not searchable by other users, so a sandbox's root could not reach its root filesystem below it; make it so (chmod o+x) or move the state dir", d, mode)
			}
			if err := os.Chmod(d, mode|0o011); err != nil {
				return err
			}
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}

// findRuntime resolves Config.Runtime to a binary and its kind.
func findRuntime(want string) (path, name string, err error) {
	switch want {
	case "":
		order := []string{"crun", "runc"}
		if hybridCgroupRefusedByCrun() {
			order = []string{"runc", "crun"}
		}
		for _, n := range order {
			if p, err := exec.LookPath(n); err == nil {
				return p, n, nil
			}
		}
		return "", "", fmt.Errorf("no OCI runtime: neither crun nor runc is on PATH: %w", ErrUnavailable)
	case "runc", "crun":
		p, err := exec.LookPath(want)
		if err != nil {
			return "", "", fmt.Errorf("OCI runtime %s: %w: %w", want, err, ErrUnavailable)
		}
		return p, want, nil
	default:
		st, err := os.Stat(want)
		if err != nil {
			return "", "", fmt.Errorf("OCI runtime %s: %w: %w", want, err, ErrUnavailable)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return "", "", fmt.Errorf("OCI runtime %s is not an executable file: %w", want, ErrUnavailable)
		}
		return want, filepath.Base(want), nil
	}
}

// isCgroup2 reports whether dir is a cgroup2 mount.
func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// hybridCgroupRefusedByCrun reports a hybrid cgroup layout whose cgroup2
// part has controllers: crun refuses to run there ("cgroups in hybrid mode
// not supported"), runc does not.
func hybridCgroupRefusedByCrun() bool {
	if isCgroup2("/sys/fs/cgroup") || !isCgroup2("/sys/fs/cgroup/unified") {
		return false
	}
	data, err := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
	return err == nil && len(bytes.TrimSpace(data)) > 0
}

func (b *ociBackend) bundle(id string) string { return filepath.Join(b.boxesDir, id) }

// Validate rejects what a container cannot honour and paths that are not there.
func (b *ociBackend) Validate(s Spec) error {
	if s.Kernel != "" {
		return invalidField("kernel", "not supported by the container backend")
	}
	if s.BootArgs != "" {
		return invalidField("boot_args", "not supported by the container backend")
	}
	if s.SSHPublicKey != "" {
		return invalidField("ssh_public_key", "not supported by the container backend (no sshd runs in a sandbox; use run or exec)")
	}
	if !s.Security.HostUsers && b.usernsErr != nil {
		return fmt.Errorf("a sandbox with a user namespace: %w: %w", b.usernsErr, ErrUnavailable)
	}
	switch {
	case s.Image != "":
		r, err := b.images.parseRef(s.Image)
		if err != nil {
			return err
		}
		if _, err := b.images.authenticator(r, s.RegistryAuth); err != nil {
			return err
		}
	case s.Rootfs != "":
		if _, err := b.checkRootfs(s.Rootfs); err != nil {
			return invalidField("rootfs", "%v", err)
		}
	default:
		if err := EnsureBusyboxRootfs(b.defaultRootfs, b.busybox); err != nil {
			return fmt.Errorf("the default root filesystem %s is missing and cannot be made: %w: %w", b.defaultRootfs, err, ErrUnavailable)
		}
		if err := checkRootfsDir(b.defaultRootfs); err != nil {
			return fmt.Errorf("the default root filesystem: %w: %w", err, ErrUnavailable)
		}
	}
	for i, m := range s.Mounts {
		if err := b.mounts.validate(i, s.ID, m); err != nil {
			return err
		}
	}
	return nil
}

func checkRootfsDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%q is not an absolute path", dir)
	}
	if strings.ContainsAny(dir, ",:\\") {
		return fmt.Errorf("%q holds one of , : \\ (overlayfs options cannot)", dir)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}

// Start makes the bundle (overlay root, config.json) and runs the init.
// A sandbox restored from a snapshot gets a writable copy of the
// snapshot's layer over the lower layer the snapshot was taken over.
//
// With a user namespace (idmap.Size > 0) the lower layer is seen through
// an idmapped mount, so its files, owned by root and the image's users,
// belong to the sandbox's range without a byte of it changing; where the
// file system has no idmapped mounts the sandbox gets a copy of it with
// shifted owners instead. The writable layer's files are stored in the
// range, as the sandbox makes them; a snapshot restored into another range
// is shifted to it.
func (b *ociBackend) Start(ctx context.Context, id string, s Spec, idmap IDMap, from string) (exited <-chan struct{}, err error) {
	dir := b.bundle(id)
	var meta bundleMeta
	var layerMap IDMap // the range the restored layer's files are in
	switch {
	case from != "":
		if meta, err = readBundleMeta(from); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", from, err)
		}
		if _, err := os.Stat(meta.Lower); err != nil {
			return nil, fmt.Errorf("the root filesystem the snapshot was taken over is gone: %w", err)
		}
		layerMap = meta.IDMap
	case s.Image != "":
		img, err := b.images.get(ctx, s.Image, s.RegistryAuth)
		if err != nil {
			return nil, err
		}
		meta = bundleMeta{Lower: img.Rootfs, Image: img.Config}
	case s.Rootfs != "":
		if meta.Lower, err = b.checkRootfs(s.Rootfs); err != nil {
			return nil, invalidField("rootfs", "%v", err)
		}
	default:
		meta.Lower = b.defaultRootfs
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	meta.IDMap = idmap
	data, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(dir, bundleMetaFile), data, 0o600); err != nil {
		return nil, err
	}
	// The sandbox's root (its range's first id) makes the runtime's
	// mounts from inside its user namespace: it must be able to pass
	// through the bundle, and no other user may.
	root := int(idmap.HostID)
	if err := os.Chown(dir, 0, root); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o710); err != nil {
		return nil, err
	}
	// The overlay's upper and work directories live in one layer
	// directory, a btrfs subvolume where the state directory is on btrfs:
	// overlayfs moves files between them, which btrfs refuses across
	// subvolumes, and a snapshot of the layer takes both.
	rootfs, layer := filepath.Join(dir, "rootfs"), filepath.Join(dir, layerDir)
	upper, work := filepath.Join(layer, "upper"), filepath.Join(layer, "work")
	if err := os.MkdirAll(rootfs, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.cleanup(id)
		}
	}()
	if from != "" {
		src := filepath.Join(from, layerDir)
		if err := b.snap.Snapshot(src, layer, false); err != nil {
			// A snapshot taken as a copy (of a layer that was no
			// subvolume) is no subvolume either: copy it in turn.
			_ = b.deleteLayer(layer)
			if cerr := disk.NewCopySnapshotter().Snapshot(src, layer, false); cerr != nil {
				return nil, fmt.Errorf("restore the snapshot's files: %w (then, copying: %w)", err, cerr)
			}
		}
		if err := shiftOwners(layer, layerMap.HostID, idmap.HostID, idRangeSize); err != nil {
			return nil, fmt.Errorf("restore the snapshot's files into the sandbox's id range: %w", err)
		}
	} else {
		if err := b.snap.Create(layer); err != nil {
			return nil, fmt.Errorf("writable layer: %w", err)
		}
		for _, d := range []string{upper, work} {
			if err := os.Mkdir(d, 0o700); err != nil {
				return nil, err
			}
		}
		// The root of the merged tree takes the upper dir's owner and mode.
		if err := copyOwnerMode(meta.Lower, upper, idmap.HostID); err != nil {
			return nil, err
		}
	}
	lower, idmapped, err := b.lowerLayer(dir, meta.Lower, idmap)
	if err != nil {
		return nil, err
	}
	err = mountOverlay(lower, upper, work, rootfs)
	if idmapped {
		// The overlay holds its own clone of the idmapped mount.
		if uerr := unmount(lower); uerr != nil && err == nil {
			err = uerr
		}
	}
	if err != nil {
		return nil, err
	}
	if wd := firstNonEmpty(s.WorkingDir, meta.Image.WorkingDir); wd != "" {
		if err := mkdirAllInRoot(rootfs, wd, 0o755, root, root); err != nil {
			return nil, fmt.Errorf("working dir %s: %w", wd, err)
		}
	}
	params := bundleParams{
		ID:             id,
		InitPath:       b.initPath,
		Limits:         s.Limits,
		CgroupsPath:    filepath.Join(b.cgroupParent, id),
		Cgroup2:        b.cgroup2,
		IDMap:          idmap,
		ReadOnlyRootfs: s.Security.ReadOnlyRootfs,
	}
	// Each mount source is opened and checked here, and the runtime binds
	// a mount of what was opened, attached in the bundle until it has.
	if params.Mounts, err = b.attachMounts(dir, id, s.Mounts, root); err != nil {
		return nil, err
	}
	defer func() {
		// The runtime has bound them (or failed): the sandbox holds its
		// own copies. One left behind is removed by Stop.
		if err := b.detachMounts(id); err != nil {
			b.log.Warn("detach the mount sources from the bundle", "id", id, "err", err)
		}
	}()
	if s.NetworkMode == NetworkBridge {
		if params.NetnsPath, params.ResolvConf, err = b.setupNetwork(ctx, id, dir); err != nil {
			return nil, err
		}
	}
	spec, err := buildSpec(params)
	if err != nil {
		return nil, err
	}
	if data, err = json.Marshal(spec); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		return nil, err
	}
	pidFile := filepath.Join(dir, initPidFile)
	os.Remove(pidFile)
	if err := b.runtimeRun(ctx, id, dir, pidFile); err != nil {
		return nil, err
	}
	pid, err := readPidFile(pidFile)
	if err != nil {
		return nil, err
	}
	box, err := b.track(id, pid, meta)
	if err != nil {
		return nil, err
	}
	return box.init.exited, nil
}

// mountsDir is the bundle directory where a sandbox's bind-mount sources
// are attached while the runtime makes its mounts.
const mountsDir = "mounts"

// attachMounts opens and checks each mount's source (mountPolicy.open)
// and attaches a bind mount of exactly what it opened at <dir>/mounts/<i>,
// which only root can reach: the runtime binds from there, so nothing
// swapped into the source path after the check can be what it mounts.
// The sources come back rewritten to those places; detachMounts removes
// them once the runtime is done.
func (b *ociBackend) attachMounts(dir, id string, mounts []Mount, root int) ([]Mount, error) {
	if len(mounts) == 0 {
		return nil, nil
	}
	base := filepath.Join(dir, mountsDir)
	if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	out := make([]Mount, 0, len(mounts))
	for i, m := range mounts {
		f, err := b.mounts.open(i, id, m, root, root)
		if err != nil {
			return nil, err
		}
		at := filepath.Join(base, strconv.Itoa(i))
		err = bindOpenFile(f, at)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("mounts[%d]: %w", i, err)
		}
		out = append(out, Mount{Source: at, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	return out, nil
}

// detachMounts unmounts and removes what attachMounts left of sandbox id.
func (b *ociBackend) detachMounts(id string) error {
	base := filepath.Join(b.bundle(id), mountsDir)
	entries, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(base, e.Name())
		if err := unmount(p); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return os.Remove(base)
}

// bindOpenFile attaches a bind mount of f (an O_PATH file, a directory or
// a regular file; not what is mounted below it) at path, made for it.
func bindOpenFile(f *os.File, path string) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	} else if err := os.WriteFile(path, nil, 0o600); err != nil {
		return err
	}
	fd, err := unix.OpenTree(int(f.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("clone the mount of %s: %w", f.Name(), err)
	}
	defer unix.Close(fd)
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach %s on %s: %w", f.Name(), path, err)
	}
	return nil
}

// lowerDir is where a sandbox with a user namespace sees its lower layer:
// an idmapped mount while the overlay is made, else a shifted copy.
const lowerDir = "lower"

// lowerLayer is the overlay's lower layer for a sandbox of range idmap:
// lower itself without a user namespace, else lower seen through an
// idmapped mount on the bundle's lower directory (idmapped is true: the
// caller unmounts it once the overlay holds it), or, where the file system
// cannot idmap, a copy of lower there with the owners shifted.
func (b *ociBackend) lowerLayer(dir, lower string, idmap IDMap) (path string, idmapped bool, err error) {
	if idmap.Size == 0 {
		return lower, false, nil
	}
	target := filepath.Join(dir, lowerDir)
	if err := unmount(target); err != nil {
		return "", false, err
	}
	if err := os.RemoveAll(target); err != nil {
		return "", false, err
	}
	if err := os.Mkdir(target, 0o700); err != nil {
		return "", false, err
	}
	ns, err := usernsFile(idmap)
	if err != nil {
		return "", false, err
	}
	defer ns.Close()
	err = mountIDMapped(lower, target, ns)
	if err == nil {
		return target, true, nil
	}
	if !errors.Is(err, errNoIDMap) {
		return "", false, err
	}
	b.noIDMapOnce.Do(func() {
		b.log.Warn("the state dir's file system has no idmapped mounts: each sandbox with a user namespace gets a copy of its root filesystem, owned by its range", "err", err)
	})
	if err := os.Remove(target); err != nil {
		return "", false, err
	}
	if err := disk.NewCopySnapshotter().Snapshot(lower, target, false); err != nil {
		return "", false, err
	}
	if err := shiftOwners(target, 0, idmap.HostID, idmap.Size); err != nil {
		return "", false, err
	}
	return target, false, nil
}

// setupNetwork gives a bridged sandbox its network namespace, veth and
// resolv.conf (written into the bundle), clearing what an earlier start of
// the same id may have left.
func (b *ociBackend) setupNetwork(ctx context.Context, id, dir string) (netnsPath, resolvConf string, err error) {
	addr, err := b.net.Allocate(id) // held since Address: the same one
	if err != nil {
		return "", "", fmt.Errorf("network: %w", err)
	}
	if err := b.net.Teardown(id); err != nil {
		return "", "", err
	}
	ep, err := b.net.Setup(ctx, id, addr)
	if err != nil {
		return "", "", err
	}
	data, err := b.net.ResolvConf()
	if err != nil {
		return "", "", fmt.Errorf("network: %w", err)
	}
	resolvConf = filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolvConf, data, 0o644); err != nil {
		return "", "", err
	}
	return ep.NetnsPath, resolvConf, nil
}

// Address allocates a bridged sandbox's address.
func (b *ociBackend) Address(id string, s Spec) (string, string, error) {
	if s.NetworkMode != NetworkBridge {
		return "", "", nil
	}
	addr, err := b.net.Allocate(id)
	switch {
	case errors.Is(err, network.ErrExhausted):
		return "", "", fmt.Errorf("%w: %w", err, ErrConflict)
	case err != nil:
		return "", "", err
	}
	return addr.String(), b.net.Gateway().String(), nil
}

// ReserveAddress holds addr for id again after an agent restart.
func (b *ociBackend) ReserveAddress(id, addr string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return err
	}
	return b.net.Reserve(id, a)
}

// ReleaseAddress frees id's address.
func (b *ociBackend) ReleaseAddress(id string) { b.net.Release(id) }

// runtimeRun is `runc run --detach`: create and start in one call. The
// runtime's output (its errors) goes to runtime.log; the init inherits
// /dev/null and that log, and swaps the log for /dev/null when it starts,
// and the listening init socket as its fd 3 (listenForInit).
func (b *ociBackend) runtimeRun(ctx context.Context, id, dir, pidFile string) error {
	logPath := filepath.Join(dir, runtimeLogFile)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	sock, err := listenForInit(dir)
	if err != nil {
		return err
	}
	opts := &runc.CreateOpts{
		IO:      &fileIO{stdin: devnull, stdout: logf, stderr: logf},
		PidFile: pidFile,
		Detach:  true,
		NoPivot: b.noPivot,
	}
	if sock != nil {
		defer sock.Close()
		opts.ExtraFiles = []*os.File{sock} // the init's fd 3
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeTimeout)
	defer cancel()
	_, err = b.rt.Run(rctx, id, dir, opts)
	if err != nil {
		return fmt.Errorf("%s run: %w: %s", b.runtimeName, err, logTail(logPath))
	}
	return nil
}

// logTail is the end of a runtime log, for an error message.
func logTail(p string) string {
	data, _ := os.ReadFile(p)
	data = bytes.TrimSpace(data)
	if len(data) > 2048 {
		data = data[len(data)-2048:]
	}
	return string(data)
}

func readPidFile(p string) (int, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: bad pid %q", p, data)
	}
	return pid, nil
}

// track starts watching a sandbox's init.
func (b *ociBackend) track(id string, pid int, meta bundleMeta) (*ociBox, error) {
	w, err := watchPid(pid)
	if err != nil {
		return nil, err
	}
	ns, err := pidNamespace(pid)
	if err != nil {
		w.close()
		return nil, fmt.Errorf("init %d: %w", pid, err)
	}
	box := &ociBox{init: w, ns: ns, meta: meta}
	b.mu.Lock()
	if old := b.boxes[id]; old != nil {
		old.init.close()
	}
	b.boxes[id] = box
	b.mu.Unlock()
	return box, nil
}

func (b *ociBackend) box(id string) (*ociBox, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	box := b.boxes[id]
	if box == nil {
		return nil, fmt.Errorf("sandbox %q has no running container: %w", id, ErrConflict)
	}
	return box, nil
}

// Adopt finds a container made before an agent restart.
func (b *ociBackend) Adopt(ctx context.Context, id string) (<-chan struct{}, bool, error) {
	c, err := b.rt.State(ctx, id)
	if err != nil {
		if isNotExist(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	if c.Status == "paused" && c.Pid > 0 {
		// Frozen by a checkpoint that an agent killed half way never
		// thawed: the sandbox is whole, only stopped in its tracks.
		if err := b.rt.Resume(ctx, id); err != nil {
			return nil, false, fmt.Errorf("thaw it (left frozen by a checkpoint the agent did not finish): %w", err)
		}
		b.log.Warn("thawed a sandbox left frozen by a checkpoint the agent did not finish", "id", id)
		c.Status = "running"
	}
	if c.Status != "running" || c.Pid <= 0 {
		return nil, false, nil
	}
	meta, err := readBundleMeta(b.bundle(id))
	if err != nil {
		return nil, false, err
	}
	box, err := b.track(id, c.Pid, meta)
	if err != nil {
		return nil, false, err
	}
	select {
	case <-box.init.exited:
		return nil, false, nil
	default:
	}
	return box.init.exited, true, nil
}

// isNotExist recognises the runtimes' "no such container" errors.
func isNotExist(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "does not exist") || strings.Contains(msg, "not found") ||
		strings.Contains(msg, "No such file or directory")
}

// KillWorkloads kills every process of the sandbox but its init, and
// waits (a few seconds at most) for them to be gone.
func (b *ociBackend) KillWorkloads(ctx context.Context, id string) error {
	box, err := b.box(id)
	if err != nil {
		return err
	}
	pids, err := b.rt.Ps(ctx, id)
	if err != nil {
		return fmt.Errorf("%s ps: %w", b.runtimeName, err)
	}
	var errs []error
	var watches []*pidWatch
	for _, pid := range pids {
		if pid == box.init.pid {
			continue
		}
		if w, err := watchPid(pid); err == nil {
			watches = append(watches, w)
			defer w.close()
		}
		errs = append(errs, signalInNamespace(pid, box.ns, unix.SIGKILL))
	}
	for _, w := range watches {
		if !w.wait(initKillTimeout) {
			errs = append(errs, fmt.Errorf("process %d outlived SIGKILL", w.pid))
		}
	}
	return errors.Join(errs...)
}

// Stop ends the init (SIGTERM: it exits at once, and the kernel kills the
// rest of the sandbox with it), deletes the container, and unmounts its root.
func (b *ociBackend) Stop(ctx context.Context, id string) error {
	b.mu.Lock()
	box := b.boxes[id]
	delete(b.boxes, id)
	b.mu.Unlock()
	if box != nil {
		defer box.init.close()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeTimeout)
	defer cancel()

	c, err := b.rt.State(ctx, id)
	switch {
	case err != nil && isNotExist(err):
		// never made, or deleted already
	case err != nil:
		return fmt.Errorf("%s state: %w", b.runtimeName, err)
	default:
		if c.Status == "paused" {
			// Frozen (a checkpoint cut short): a frozen init cannot act
			// on SIGTERM, and on a cgroup v1 freezer not even on SIGKILL.
			if err := b.rt.Resume(ctx, id); err != nil {
				b.log.Warn("thaw the sandbox to stop it", "id", id, "err", err)
			}
		}
		if c.Status == "running" || c.Status == "created" || c.Status == "paused" {
			w := box.initWatch()
			if w == nil && c.Pid > 0 {
				if w, err = watchPid(c.Pid); err != nil {
					return err
				}
				defer w.close()
			}
			if err := b.rt.Kill(ctx, id, int(unix.SIGTERM), nil); err != nil && !isNotExist(err) {
				b.log.Warn("SIGTERM the sandbox init", "id", id, "err", err)
			}
			if w != nil && !w.wait(initTermTimeout) {
				if err := b.rt.Kill(ctx, id, int(unix.SIGKILL), &runc.KillOpts{All: true}); err != nil && !isNotExist(err) {
					return fmt.Errorf("%s kill: %w", b.runtimeName, err)
				}
				if !w.wait(initKillTimeout) {
					return fmt.Errorf("the init of sandbox %q outlived SIGKILL", id)
				}
			}
		}
		if err := b.rt.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil && !isNotExist(err) {
			return fmt.Errorf("%s delete: %w", b.runtimeName, err)
		}
	}
	b.removeCgroups(id)
	if err := b.net.Teardown(id); err != nil {
		return err
	}
	// The lower directory is an idmapped mount, and the mounts directory
	// holds mounts of the sources, only if an agent died while it made
	// them: before the files are removed, make sure they are none, or
	// they would be the image's and the mounted directories'.
	if err := unmount(filepath.Join(b.bundle(id), lowerDir)); err != nil {
		return err
	}
	if err := b.detachMounts(id); err != nil {
		return err
	}
	return unmount(filepath.Join(b.bundle(id), "rootfs"))
}

func (box *ociBox) initWatch() *pidWatch {
	if box == nil {
		return nil
	}
	return box.init
}

// cleanup undoes a start that failed half way.
func (b *ociBackend) cleanup(id string) {
	if err := b.Stop(context.Background(), id); err != nil {
		b.log.Error("clean up a failed start", "id", id, "err", err)
	}
}

// Destroy removes the bundle's files, once nothing is mounted on its root.
func (b *ociBackend) Destroy(ctx context.Context, id string) error {
	if err := b.Stop(ctx, id); err != nil {
		return err
	}
	dir := b.bundle(id)
	rootfs := filepath.Join(dir, "rootfs")
	mounted, err := isMountPoint(rootfs)
	if err != nil {
		return fmt.Errorf("sandbox %q: not removing its files: %w", id, err)
	}
	if mounted {
		return fmt.Errorf("sandbox %q: its root %s is still mounted; not removing its files", id, rootfs)
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch e.Name() {
		case recordFile, legacyRecordFile:
			continue
		case layerDir:
			err = b.deleteLayer(p)
		default:
			err = os.RemoveAll(p)
		}
		if err != nil {
			return err
		}
	}
	// Its volume directory goes with it: nothing is ever mounted there.
	if err := os.RemoveAll(filepath.Join(b.mounts.volumes, id)); err != nil {
		return err
	}
	b.net.Release(id)
	return nil
}

// deleteLayer removes a writable layer or a snapshot's copy of one: a
// btrfs subvolume, or a plain tree (one made before the state directory
// was on btrfs, or a copy with immutable files).
func (b *ociBackend) deleteLayer(p string) error {
	if err := b.snap.Delete(p); err != nil {
		if cerr := disk.NewCopySnapshotter().Delete(p); cerr != nil {
			return err
		}
	}
	return nil
}

// readBundleMeta reads backend.json from a bundle or snapshot directory.
func readBundleMeta(dir string) (bundleMeta, error) {
	var meta bundleMeta
	data, err := os.ReadFile(filepath.Join(dir, bundleMetaFile))
	if err != nil {
		return meta, err
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return meta, fmt.Errorf("%s: %w", filepath.Join(dir, bundleMetaFile), err)
	}
	return meta, nil
}

// Checkpoint freezes the sandbox (its cgroup), snapshots its writable
// layer into dir/layer, read-only, thaws it, and keeps the bundle's
// backend.json beside it: the lower layer and image config a restore
// needs. A sandbox that cannot be frozen is not checkpointed.
func (b *ociBackend) Checkpoint(ctx context.Context, id, dir string) (err error) {
	if _, err := b.box(id); err != nil {
		return err
	}
	bundle := b.bundle(id)
	meta, err := os.ReadFile(filepath.Join(bundle, bundleMetaFile))
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeTimeout)
	defer cancel()
	// Frozen or not at all: a sandbox that runs while its files are
	// copied could swap a file for a symlink (or a FIFO) under the copy.
	if err := b.rt.Pause(rctx, id); err != nil {
		return fmt.Errorf("freeze sandbox %q for its checkpoint: %w", id, err)
	}
	defer func() {
		// A context of its own: a long copy must not leave the
		// sandbox frozen because the pause's deadline passed.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeTimeout)
		defer cancel()
		if rerr := b.rt.Resume(tctx, id); rerr != nil {
			b.log.Error("thaw the sandbox after a checkpoint", "id", id, "err", rerr)
			err = errors.Join(err, fmt.Errorf("thaw sandbox %q after the checkpoint: %w", id, rerr))
		}
	}()
	src, dst := filepath.Join(bundle, layerDir), filepath.Join(dir, layerDir)
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("sandbox %q has no layer directory (made by an older agent?); it cannot be checkpointed: %w", id, err)
	}
	err = b.snap.Snapshot(src, dst, true)
	if err != nil {
		// A layer made before the state directory was on btrfs is no
		// subvolume; a filesystem without the immutable flag cannot keep
		// a copy read-only. A writable copy is still a snapshot.
		_ = b.deleteLayer(dst)
		if cerr := disk.NewCopySnapshotter().Snapshot(src, dst, false); cerr != nil {
			return fmt.Errorf("%w (then, copying: %w)", err, cerr)
		}
		b.log.Warn("snapshot taken as a writable copy", "id", id, "why", err)
	}
	return writeFileAtomic(filepath.Join(dir, bundleMetaFile), meta, 0o600)
}

// DeleteSnapshot removes a snapshot directory.
func (b *ociBackend) DeleteSnapshot(ctx context.Context, dir string) error {
	if err := b.deleteLayer(filepath.Join(dir, layerDir)); err != nil {
		return err
	}
	// What is left may be a copy cut short, with immutable files.
	return disk.NewCopySnapshotter().Delete(dir)
}

// Close cancels image pulls and stops watching the inits; the sandboxes
// keep running.
func (b *ociBackend) Close() error {
	b.images.close()
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, box := range b.boxes {
		box.init.close()
		delete(b.boxes, id)
	}
	return nil
}

// copyOwnerMode gives dst the owner of src, its ids plus shift (the
// sandbox's range), and its permission bits.
func copyOwnerMode(src, dst string, shift uint32) error {
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return &os.PathError{Op: "stat", Path: src, Err: err}
	}
	if shift > 0 && (st.Uid >= idRangeSize || st.Gid >= idRangeSize) {
		st.Uid, st.Gid = 0, 0 // out of the range: its root's, not the next range's
	}
	if err := unix.Chown(dst, int(st.Uid+shift), int(st.Gid+shift)); err != nil {
		return &os.PathError{Op: "chown", Path: dst, Err: err}
	}
	if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
		return &os.PathError{Op: "chmod", Path: dst, Err: err}
	}
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// fileIO gives the runtime process the files it is to use as its stdio,
// as they are: no copying goroutines, nothing else inherited. The files in
// closeAfterStart (the child's ends of pipes) are closed in the agent once
// the runtime has started, so the agent sees EOF when the process is done.
type fileIO struct {
	stdin, stdout, stderr *os.File
	closeAfterStart       []*os.File
}

var (
	_ runc.IO          = (*fileIO)(nil)
	_ runc.StartCloser = (*fileIO)(nil)
)

func (f *fileIO) Close() error { return f.CloseAfterStart() }

func (f *fileIO) Stdin() io.WriteCloser { return nil }
func (f *fileIO) Stdout() io.ReadCloser { return nil }
func (f *fileIO) Stderr() io.ReadCloser { return nil }
func (f *fileIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = f.stdin, f.stdout, f.stderr
}

// CloseAfterStart closes the child's ends.
func (f *fileIO) CloseAfterStart() error {
	var errs []error
	for _, c := range f.closeAfterStart {
		errs = append(errs, c.Close())
	}
	f.closeAfterStart = nil
	return errors.Join(errs...)
}

// markInheritedCloexec sets close-on-exec on every descriptor past stdio.
// Go opens its own that way, but descriptors inherited from whoever
// started the agent are not, and os/exec would pass them on to the OCI
// runtime, from where a runtime bug could let them into a sandbox
// (CVE-2024-21626). It returns how many it changed.
func markInheritedCloexec() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, ent := range entries {
		fd, err := strconv.Atoi(ent.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC); err == nil {
			n++
		}
	}
	return n
}
