package oci

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// Config configures the OCI backend. Only StateDir is required.
type Config struct {
	// StateDir is the sandbox sandbox.Manager's (sandbox.Config.StateDir): the
	// bundles live beside its records, and the image cache and the OCI
	// runtime's state under it (see package sandbox's comment).
	StateDir string
	// Runtime is the OCI runtime: "runc", "crun", a path to either, or ""
	// for the faster one present: crun (about 2.5x faster to create and to
	// exec, see the benchmarks), else runc. On a hybrid cgroup host whose
	// cgroup2 hierarchy has controllers, which crun refuses, "" picks runc.
	Runtime string
	// DefaultRootfs is the root filesystem of sandboxes that name neither
	// an image nor a rootfs; "" is StateDir/rootfs/default. When it does
	// not exist it is made from BusyboxPath (EnsureBusyboxRootfs).
	DefaultRootfs string
	// BusyboxPath is the static busybox the default root filesystem is made
	// from; "" is /bin/busybox.
	BusyboxPath string
	// Bridge is the host bridge's name; "" is arcbox0.
	Bridge string
	// ResolvConf is the host file whose nameservers (but loopback ones)
	// bridged sandboxes get; "" is /etc/resolv.conf.
	ResolvConf string
	// InitPath is the static binary each sandbox runs as its process 1,
	// bind-mounted read-only at /.arcbox/init and run as
	// `/.arcbox/init sandbox-init`: it must then call sandbox.InitMain. "" is the
	// running executable.
	InitPath string
	// CgroupParent is the cgroup the sandboxes' cgroups are made under, as
	// <CgroupParent>/<id>; "" is DefaultCgroupParent(StateDir), one per
	// agent instance, so two agents on a machine never
	// share a sandbox's cgroup. A relative path is taken by runc
	// relative to the agent's own cgroup and by crun relative to the root.
	CgroupParent string
	// MountRoots are the host directories whose contents a create may
	// bind-mount (each source must lie under one, resolved without leaving
	// it through a symlink); nil is DefaultMountRoots. Whatever the roots,
	// the agent's sockets, the runtime's, the state dir and the data
	// volume's internals are refused (ForbiddenPaths). Each sandbox may
	// also mount from its own volume directory, StateDir/volumes/<id>.
	MountRoots []string
	// ForbiddenPaths are host paths no mount may reach into or hold, on
	// top of StateDir and the runtime sockets the package knows of: main
	// passes the agent's own sockets and the data volume's mount point.
	ForbiddenPaths []string
	// Registries, when set, are the only registries images may come from
	// (host or host:port, as in an image reference). Unset, any registry
	// may be used but loopback, link-local and unspecified addresses,
	// which are refused unless listed, whatever a name resolves to.
	Registries []string
	// RegistryAuthFile is a Docker config.json ("auths") whose
	// credentials pulls use when a create brings none; "" is none.
	RegistryAuthFile string
	// BridgeCIDR is the range of the addresses the sandbox.Manager gives bridged
	// sandboxes (sandbox.Config.BridgeCIDR): the bridge takes its first
	// address. The zero value is sandbox.DefaultBridgeCIDR.
	BridgeCIDR netip.Prefix
	// Logger logs; nil discards.
	Logger *slog.Logger
}

// DefaultBusyboxPath is Config.BusyboxPath's default.
const DefaultBusyboxPath = "/bin/busybox"

// DefaultRootfsDir is Config.DefaultRootfs's default for a state dir.
func DefaultRootfsDir(stateDir string) string { return filepath.Join(stateDir, "rootfs", "default") }

// NetnsDir is where a backend on stateDir bind-mounts its bridged
// sandboxes' network namespaces, one file per sandbox id: what a port
// watcher looks into.
func NetnsDir(stateDir string) string { return filepath.Join(stateDir, "netns") }

// withDefaults fills what cfg leaves unset, once, in New.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.StateDir == "" {
		return cfg, sandbox.Errorf(sandbox.ErrUnavailable, "a state dir is required (Config.StateDir)")
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return cfg, fmt.Errorf("oci: state dir: %w", err)
	}
	cfg.StateDir = abs
	if cfg.DefaultRootfs == "" {
		cfg.DefaultRootfs = DefaultRootfsDir(cfg.StateDir)
	}
	if cfg.BusyboxPath == "" {
		cfg.BusyboxPath = DefaultBusyboxPath
	}
	if !cfg.BridgeCIDR.IsValid() {
		cfg.BridgeCIDR = sandbox.DefaultBridgeCIDR
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent(cfg.StateDir)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// DefaultCgroupParent is the sandboxes' parent cgroup of the agent whose
// state dir is stateDir, "arcbox-<8 hex digits of the absolute path's
// SHA-256>": one per agent instance, so that tests can tell their own
// agents' cgroups from those of agents running beside them.
func DefaultCgroupParent(stateDir string) string {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		abs = stateDir
	}
	sum := sha256.Sum256([]byte(abs))
	return "arcbox-" + hex.EncodeToString(sum[:4])
}
