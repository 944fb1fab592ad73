package sandbox

import (
	"context"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// Backend makes, runs and removes the containers; the Manager keeps the
// states, records, addresses and events. The real one is package
// sandbox/oci's; the Manager's unit tests use a fake. The Manager calls it
// for one sandbox at a time (sandbox.opMu), and never with m.mu held.
type Backend interface {
	// Validate checks what only the backend can: fields it cannot honour
	// and host paths that must exist. Errors wrap ErrInvalid.
	Validate(s Spec) error
	// Start makes the sandbox's container and starts its init. On error
	// it leaves no container, mount or cgroup behind. exited is closed
	// when the init exits.
	Start(ctx context.Context, r StartRequest) (exited <-chan struct{}, err error)
	// Adopt finds the container an earlier agent made. alive is false when
	// its init no longer runs.
	Adopt(ctx context.Context, id string) (exited <-chan struct{}, alive bool, err error)
	// CheckProcess checks what only the backend can of a process to run,
	// before the sandbox is claimed for it. Errors wrap ErrInvalid.
	CheckProcess(p Process) error
	// StartProcess starts a process in a ready sandbox, with stdio.Stdin as
	// its input and, with p.TTY, a terminal of size stdio.Size. (The Manager
	// applies stdio.Resize.)
	StartProcess(ctx context.Context, id string, s Spec, p Process, stdio ExecIO) (RunningProcess, error)
	// Checkpoint captures a ready sandbox's files into the existing,
	// empty directory dir, consistently (the sandbox is frozen meanwhile).
	Checkpoint(ctx context.Context, id, dir string) error
	// DeleteSnapshot removes a snapshot directory made by Checkpoint, or
	// what a failed one left. A missing directory is not an error.
	DeleteSnapshot(ctx context.Context, dir string) error
	// OpenFiles opens the file tree of sandbox id, whose root filesystem
	// is mounted (the sandbox is ready or running), for one request. The
	// Manager calls it with no lock held.
	OpenFiles(id string, r FilesRequest) (FileTree, error)
	// Stats reads the resource use of sandbox id, whose init runs (Time
	// is the Manager's to set). The Manager calls it with no lock held.
	Stats(ctx context.Context, id string) (Stats, error)
	// ImageConfig returns the config of the image sandbox id was made
	// from, kept beside its files (so an agent restart and a restore from
	// a snapshot keep it); nil when the backend has not made the
	// sandbox's files (yet).
	ImageConfig(id string) (*ImageConfig, error)
	// KillWorkloads kills every process of the sandbox but its init: what
	// is left of a run lost across an agent restart.
	KillWorkloads(ctx context.Context, id string) error
	// Stop ends the init, so every process of the sandbox, and releases
	// the container: runtime state, cgroup, network, mounts. Files stay.
	// Idempotent.
	Stop(ctx context.Context, id string) error
	// Destroy removes what Stop left but the Manager's files (IsRecordFile):
	// the bundle's files. Idempotent.
	Destroy(ctx context.Context, id string) error
	// Close releases what the backend holds (watchers); containers keep running.
	Close() error
}

// StartRequest is what Backend.Start makes a sandbox from.
type StartRequest struct {
	ID   string
	Spec Spec
	// IDMap, unless its Size is 0, is the range of host ids the sandbox's
	// user namespace maps.
	IDMap IDMap
	// NextIDMap, unless its Size is 0, is the range the next sandbox with
	// a user namespace is likely to get: a backend may make ready what
	// that one will need, while nothing waits for it. It is a guess: the
	// next sandbox may get another range, or none.
	NextIDMap IDMap
	// Address is a bridged sandbox's address, from the Manager's pool;
	// invalid (the zero Addr) for a sandbox without a network.
	Address netip.Addr
	// From, when set, is a snapshot directory made by Checkpoint: the
	// sandbox starts with its files.
	From string
	// Progress, when set, is told how the download of each layer of the
	// sandbox's image goes while Start pulls it (not when the image is
	// in the cache): Done 0 when a layer's download begins, then now and
	// then as it grows, and Done == Total last once it is whole. It is
	// called from the pull's goroutines and must return promptly.
	Progress func(PullProgress)
}

// PullProgress is how far the download of one layer of an image has come.
type PullProgress struct {
	Layer string // the layer's digest, "sha256:<hex>"
	Done  int64  // bytes of the compressed layer downloaded
	Total int64  // the compressed layer's size
}

// RunningProcess is a process started by Backend.StartProcess.
type RunningProcess interface {
	// Stdout is the process's output (with a terminal, all of it).
	Stdout() *os.File
	// Stderr is its error output; with a terminal, only the runtime's own
	// messages.
	Stderr() *os.File
	// Signal sends sig to the process; tree also signals its descendants.
	Signal(sig unix.Signal, tree bool) error
	// Pid is the process's pid as the sandbox sees it; 0 when unknown.
	Pid() int
	// Resize sets the terminal's size; an error without a terminal.
	Resize(width, height uint16) error
	// Wait blocks until the process has exited and returns its exit code
	// (128+n when killed by signal n).
	Wait() (int, error)
	// Close releases the pipes and files; call it after Wait and after the
	// output is read.
	Close() error
}
