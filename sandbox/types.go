package sandbox

import (
	"log/slog"
	"slices"
	"time"
)

// State is where a sandbox is in its life:
//
//	starting → ready ⇄ running
//	ready, running (and starting) → stopping → stopped
//	any but stopped → failed
type State string

// The sandbox states.
const (
	StateStarting State = "starting" // created; its container is being made
	StateReady    State = "ready"    // its init runs; no run is in progress
	StateRunning  State = "running"  // at least one run is in progress
	StateStopping State = "stopping" // being stopped
	StateStopped  State = "stopped"  // its container is gone; files kept until removed
	StateFailed   State = "failed"   // it could not start or its init died; see Info.Error
)

// States lists every state, in lifecycle order.
var States = []State{StateStarting, StateReady, StateRunning, StateStopping, StateStopped, StateFailed}

// Valid reports whether s is one of the states.
func (s State) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// The event actions.
const (
	ActionCreated  = "created"
	ActionReady    = "ready"
	ActionRunning  = "running"
	ActionIdle     = "idle" // attribute exit_code
	ActionStopping = "stopping"
	ActionStopped  = "stopped"
	ActionFailed   = "failed" // attribute error
	ActionRemoved  = "removed"
	// ActionRunStarted and ActionRunExited are a run's: attributes
	// run_id (and pid), and run_id, exit_code and, for an exit code
	// 128+n, signal.
	ActionRunStarted = "run.started"
	ActionRunExited  = "run.exited"
	// ActionImagePull is the progress of a layer of a starting sandbox's
	// image: attributes image, layer, done and total (see PullProgress).
	ActionImagePull = "image.pull"
)

// Limits are a sandbox's resources. Zero fields take Config.DefaultLimits.
type Limits struct {
	VCPUs     int   `json:"vcpus,omitempty"`      // CPU quota, in whole CPUs
	MemoryMiB int64 `json:"memory_mib,omitempty"` // memory limit
	Pids      int64 `json:"pids,omitempty"`       // how many processes and threads at once
}

// Security is how a sandbox is confined. The zero value is the default and
// the strictest that still runs ordinary workloads: a user namespace of its
// own, no new privileges, a minimal capability set, the seccomp profile,
// masked /proc and /sys paths. Each field that loosens it is reported back
// in Info.Security.
type Security struct {
	// HostUsers runs the sandbox without a user namespace: its root is the
	// guest's root (with the same capabilities, seccomp and masks). Only
	// for workloads that need it.
	HostUsers bool `json:"host_users,omitempty"`
	// ReadOnlyRootfs mounts the root filesystem read-only, with a tmpfs
	// on /tmp; the mounts stay as asked.
	ReadOnlyRootfs bool `json:"read_only_rootfs,omitempty"`
}

// RegistryAuth is the credentials of a create's image pull: a username and
// password, or an identity (refresh) token, or a registry token. They are
// used for that pull only: never logged, recorded or returned.
type RegistryAuth struct {
	Username      string
	Password      string
	IdentityToken string
	RegistryToken string
}

// String, GoString and LogValue never show the secrets, so a stray %v or
// log attribute cannot leak them.
func (a RegistryAuth) String() string {
	return "RegistryAuth{username: " + a.Username + ", secrets redacted}"
}

// GoString is String, for %#v.
func (a RegistryAuth) GoString() string { return a.String() }

// LogValue is String, for slog.
func (a RegistryAuth) LogValue() slog.Value { return slog.StringValue(a.String()) }

// Mount is a bind mount of a host path into the sandbox.
type Mount struct {
	Source   string `json:"source"` // absolute host path; must exist
	Target   string `json:"target"` // absolute path in the sandbox, no ".."
	ReadOnly bool   `json:"readonly,omitempty"`
}

// Network modes.
const (
	// NetworkNone: a network namespace of the sandbox's own with only
	// loopback, up.
	NetworkNone = "none"
	// NetworkBridge: also an eth0 with an address of Config.BridgeCIDR,
	// joined by a veth pair to the host bridge, whose address (the
	// range's first) is its default route. Requests may say "tap", the
	// original agent's name, for it.
	NetworkBridge = "bridge"
	networkTap    = "tap"
)

// Spec is a create request. The JSON tags are the form it takes in the
// sandbox's record on disk.
type Spec struct {
	ID     string            `json:"id"` // empty: generated
	Labels map[string]string `json:"labels,omitempty"`
	// Kernel and BootArgs are for a VM backend; the container backend rejects them.
	Kernel   string `json:"kernel,omitempty"`
	Rootfs   string `json:"rootfs,omitempty"` // a root filesystem directory, used read-only
	BootArgs string `json:"boot_args,omitempty"`
	Image    string `json:"image,omitempty"` // an OCI reference; wins over Rootfs
	Limits   Limits `json:"limits"`
	// Cmd, when set, runs once the sandbox is ready, as a Run whose output is
	// discarded; its exit returns the sandbox to ready.
	Cmd         []string          `json:"cmd,omitempty"`
	Env         map[string]string `json:"env,omitempty"`         // for every process; a Process's Env wins
	WorkingDir  string            `json:"working_dir,omitempty"` // default for every process; created if missing
	User        string            `json:"user,omitempty"`        // default for every process: uid[:gid] or a name
	Mounts      []Mount           `json:"mounts,omitempty"`
	NetworkMode string            `json:"network_mode,omitempty"` // "" (none), "none", "bridge" or "tap" (bridge)
	// TTL > 0: the sandbox is stopped and removed that long after creation.
	TTL          time.Duration `json:"ttl,omitempty"`
	SSHPublicKey string        `json:"ssh_public_key,omitempty"` // rejected: no sshd in a container sandbox
	Security     Security      `json:"security"`
	// RegistryAuth, when set, authenticates the pull of Image; it is
	// not part of the sandbox (not recorded, not compared).
	RegistryAuth *RegistryAuth `json:"-"`
}

// IDMap is a user namespace's mapping: IDs 0 to Size-1 inside are
// HostID to HostID+Size-1 on the guest, for users and groups alike.
type IDMap struct {
	HostID uint32 `json:"host_id"`
	Size   uint32 `json:"size"`
}

// SecurityInfo is how a sandbox is confined, as it runs.
type SecurityInfo struct {
	// UserNamespace is false for a sandbox created with HostUsers: its
	// root is the guest's root.
	UserNamespace   bool
	IDMap           IDMap // zero without a user namespace
	ReadOnlyRootfs  bool
	NoNewPrivileges bool
	Seccomp         bool
	Capabilities    []string // root's capabilities inside
}

// defaultCaps are the capabilities of root in a sandbox: what package
// managers, servers and build tools need of root (owning and reading any
// file, switching users, binding low ports, signalling, chroot). Docker's
// default set less NET_RAW, MKNOD (the device cgroup refuses every
// device anyway), SETFCAP, SETPCAP and AUDIT_WRITE. With a user namespace
// they hold only over the sandbox's own files and namespaces.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_NET_BIND_SERVICE", "CAP_SETGID", "CAP_SETUID", "CAP_SYS_CHROOT",
}

// DefaultCapabilities are the capabilities root has in a sandbox.
func DefaultCapabilities() []string { return slices.Clone(defaultCaps) }

// Info is what a sandbox looks like from outside.
type Info struct {
	ID           string
	State        State
	Labels       map[string]string
	Limits       Limits // the effective limits, defaults applied
	NetworkMode  string // "none" or "bridge"
	IPAddress    string // its address on the bridge; empty with network mode none
	Gateway      string // the bridge's address; empty with network mode none
	CreatedAt    time.Time
	ReadyAt      time.Time // zero if never ready
	LastExitedAt time.Time // zero if no workload ever ended
	// LastExitCode is the last workload's exit code, nil if none ended. 137
	// means killed (timeout, client gone, stop); -1 means the run was lost
	// because the agent restarted while it ran (Error says so).
	LastExitCode *int
	Error        string // why it failed, or a note on the last run
	Security     SecurityInfo
}

// Process is a workload to run in a sandbox.
type Process struct {
	Cmd        []string
	Env        map[string]string // on top of the sandbox's Env
	WorkingDir string            // empty: the sandbox's WorkingDir, else /
	User       string            // empty: the sandbox's User, else root
	TTY        bool              // run on a terminal; output comes as "stdout"
	// Timeout > 0: the process is killed (SIGKILL) after this long and the
	// run ends with exit code 137.
	Timeout time.Duration
	// DetachOnDisconnect keeps an attached run (Run, Exec) going when its
	// client goes away (ctx ends, or the output callback fails): its
	// output is kept as a detached run's is, readable with ReadRunOutput.
	// Without it the process is hung up (SIGHUP, then SIGKILL after
	// Config.HangupGrace).
	DetachOnDisconnect bool
}

// The output streams.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// Output is a piece of a process's output.
type Output struct {
	Stream string // StreamStdout or StreamStderr
	// Data is only valid until the callback returns: the buffer is reused.
	// Copy it to keep it.
	Data []byte
	// Truncated, set on an Output with no Data, says the rest of Stream
	// was not read, and why: the workload had exited and everything it
	// wrote was delivered, but something it left behind (a background
	// child) kept the stream open and kept writing to it. It is the
	// stream's last Output. A leftover that holds a stream without
	// writing is not reported: nothing of it was lost.
	Truncated string
}

// Filter selects sandboxes; every set field must match.
type Filter struct {
	State  State             // empty: any
	Labels map[string]string // each key must be present with this value
}

// Exit codes the Manager reports itself.
const (
	// ExitKilled is a workload killed by SIGKILL: on timeout, when the
	// client went away, or when a stop's grace ran out (128 + 9).
	ExitKilled = 137
	// ExitLost is recorded for a run that was in progress while the agent
	// restarted: its fate is unknown.
	ExitLost = -1
)
