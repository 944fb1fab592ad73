package oci

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/network"
	runc "github.com/containerd/go-runc"
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

// Backend runs sandboxes as OCI containers through runc or crun: the
// Backend of the agent.
type Backend struct {
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
	// userns is the user namespace made ahead for the next start.
	userns usernsAhead
	// noIDMapOnce logs once that the state dir cannot be idmapped.
	noIDMapOnce sync.Once
	// usernsErr says why sandboxes with a user namespace cannot start
	// here, if they cannot.
	usernsErr error
	// noPivot: / is an initramfs, where pivot_root fails; the runtime
	// chroots into a sandbox's root instead.
	noPivot bool

	mu    sync.Mutex
	boxes map[string]*container
	seq   uint64
}

var _ sandbox.Backend = (*Backend)(nil)

// container is what the backend knows of a running sandbox.
type container struct {
	init *pidWatch
	ns   string // the init's pid namespace
	meta bundleMeta

	mountsMu sync.Mutex
	mounts   []string // its spec's mount points, once a files request read them
}

// New builds the OCI backend over the runtime cfg names, for
// sandbox.NewManager. An error (no runtime binary, say) means the sandbox
// subsystem is unavailable; its text says why.
//
// It marks every file descriptor the agent inherited (past 0-2)
// close-on-exec, so none can reach a runtime or a sandbox.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "sandbox-oci")
	if os.Geteuid() != 0 {
		return nil, sandbox.Errorf(sandbox.ErrUnavailable, "sandboxes need root (overlay mounts, the OCI runtime)")
	}
	path, name, err := findRuntime(cfg.Runtime)
	if err != nil {
		return nil, err
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(vctx, path, "--version").CombinedOutput(); err != nil {
		return nil, sandbox.Errorf(sandbox.ErrUnavailable, "%s --version: %w: %s", path, err, bytes.TrimSpace(out))
	}
	initPath := cfg.InitPath
	if initPath == "" {
		if initPath, err = os.Executable(); err != nil {
			return nil, sandbox.Errorf(sandbox.ErrUnavailable, "init binary: %w", err)
		}
	}
	if err := checkStatic(initPath); err != nil {
		return nil, sandbox.Errorf(sandbox.ErrUnavailable, "init binary: %w", err)
	}
	if strings.ContainsAny(cfg.StateDir, ",:\\") {
		return nil, sandbox.Errorf(sandbox.ErrUnavailable, "state dir %q holds one of , : \\ (overlayfs options cannot)", cfg.StateDir)
	}
	niceRuntime()
	images, err := newImageStore(context.WithoutCancel(ctx), filepath.Join(cfg.StateDir, "images"), log, cfg)
	if err != nil {
		return nil, sandbox.Errorf(sandbox.ErrUnavailable, "images: %w", err)
	}
	rtRoot := filepath.Join(cfg.StateDir, "runtime")
	for _, d := range []string{rtRoot, filepath.Join(cfg.StateDir, "sandboxes"), filepath.Join(cfg.StateDir, "snapshots")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, sandbox.Errorf(sandbox.ErrUnavailable, "state dir: %w", err)
		}
	}
	usernsErr := searchableByAll(filepath.Join(cfg.StateDir, "sandboxes"), cfg.StateDir)
	if usernsErr != nil {
		log.Error("sandboxes with a user namespace cannot start", "err", usernsErr)
	}
	snap, err := disk.NewSnapshotter(cfg.StateDir)
	if err != nil {
		return nil, sandbox.Classify(sandbox.ErrUnavailable, err)
	}
	netMgr, err := network.New(network.Config{
		CIDR:       cfg.BridgeCIDR,
		Bridge:     cfg.Bridge,
		NetnsDir:   NetnsDir(cfg.StateDir),
		ResolvConf: cfg.ResolvConf,
	})
	if err != nil {
		return nil, sandbox.Errorf(sandbox.ErrUnavailable, "sandbox network: %w", err)
	}
	b := &Backend{
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
		boxes:         map[string]*container{},
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

func (b *Backend) bundle(id string) string { return filepath.Join(b.boxesDir, id) }

// checkRootfs is checkRootfs in the backend's store, which dir may name
// as configured or by its real path.
func (b *Backend) checkRootfs(dir string) (string, error) {
	if clean := filepath.Clean(dir); b.rootfsAsked != b.rootfsStore && disk.Within(clean, b.rootfsAsked) {
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
			if !disk.Within(d, top) {
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

// Validate rejects what a container cannot honour and paths that are not there.
func (b *Backend) Validate(s sandbox.Spec) error {
	if s.Kernel != "" {
		return sandbox.InvalidField("kernel", "not supported by the container backend")
	}
	if s.BootArgs != "" {
		return sandbox.InvalidField("boot_args", "not supported by the container backend")
	}
	if s.SSHPublicKey != "" {
		return sandbox.InvalidField("ssh_public_key", "not supported by the container backend (no sshd runs in a sandbox; use run or exec)")
	}
	if !s.Security.HostUsers && b.usernsErr != nil {
		return sandbox.Errorf(sandbox.ErrUnavailable, "a sandbox with a user namespace: %w", b.usernsErr)
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
			return sandbox.InvalidField("rootfs", "%v", err)
		}
	default:
		if err := EnsureBusyboxRootfs(b.defaultRootfs, b.busybox); err != nil {
			return sandbox.Errorf(sandbox.ErrUnavailable, "the default root filesystem %s is missing and cannot be made: %w", b.defaultRootfs, err)
		}
		if err := checkRootfsDir(b.defaultRootfs); err != nil {
			return sandbox.Errorf(sandbox.ErrUnavailable, "the default root filesystem: %w", err)
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

// Close cancels image pulls and stops watching the inits; the sandboxes
// keep running.
func (b *Backend) Close() error {
	b.images.close()
	b.userns.close()
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, box := range b.boxes {
		box.init.close()
		delete(b.boxes, id)
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
