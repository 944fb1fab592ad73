package sandbox

import (
	"context"
	"os"

	"golang.org/x/sys/unix"
)

// backend makes, runs and removes the containers; the Manager keeps the
// states, records and events. The OCI backend (oci_linux.go) is the real
// one; the unit tests use a fake.
type backend interface {
	// Validate checks what only the backend can: fields it cannot honour
	// and host paths that must exist. Errors wrap ErrInvalid.
	Validate(s Spec) error
	// Address gives a sandbox its network address, by its spec: for a
	// bridged one an address of the bridge's range (the same one again for
	// the same id), else none. It is held until Destroy or ReleaseAddress.
	Address(id string, s Spec) (addr, gateway string, err error)
	// ReserveAddress marks addr as held by id: for the records an earlier
	// agent left.
	ReserveAddress(id, addr string) error
	// ReleaseAddress frees id's address, if it holds one.
	ReleaseAddress(id string)
	// Start makes the sandbox's container and starts its init. idmap,
	// unless its Size is 0, is the range of host ids its user namespace
	// maps. from, when set, is a snapshot directory made by Checkpoint:
	// the sandbox starts with its files. On error it leaves no container,
	// mount or cgroup behind. exited is closed when the init exits.
	Start(ctx context.Context, id string, s Spec, idmap IDMap, from string) (exited <-chan struct{}, err error)
	// Adopt finds the container an earlier agent made. alive is false when
	// its init no longer runs.
	Adopt(ctx context.Context, id string) (exited <-chan struct{}, alive bool, err error)
	// CheckProcess checks what only the backend can of a process to run,
	// before the sandbox is claimed for it. Errors wrap ErrInvalid.
	CheckProcess(p Process) error
	// Exec starts a process in a ready sandbox, with eio.Stdin as its
	// input and, with p.TTY, a terminal of size eio.Size. (The Manager
	// applies eio.Resize.)
	Exec(ctx context.Context, id string, s Spec, p Process, eio ExecIO) (execution, error)
	// Checkpoint captures a ready sandbox's files into the existing,
	// empty directory dir, consistently (the sandbox is frozen meanwhile).
	Checkpoint(ctx context.Context, id, dir string) error
	// DeleteSnapshot removes a snapshot directory made by Checkpoint, or
	// what a failed one left. A missing directory is not an error.
	DeleteSnapshot(ctx context.Context, dir string) error
	// KillWorkloads kills every process of the sandbox but its init: what
	// is left of a run lost across an agent restart.
	KillWorkloads(ctx context.Context, id string) error
	// Stop ends the init, so every process of the sandbox, and releases
	// the container: runtime state, cgroup, mounts. Files stay. Idempotent.
	Stop(ctx context.Context, id string) error
	// Destroy removes what Stop left but the record: the bundle's files,
	// and releases the sandbox's address. Idempotent.
	Destroy(ctx context.Context, id string) error
	// Close releases what the backend holds (watchers); containers keep running.
	Close() error
}

// execution is a process started by backend.Exec.
type execution interface {
	// Stdout is the process's output (with a terminal, all of it).
	Stdout() *os.File
	// Stderr is its error output; with a terminal, only the runtime's own
	// messages.
	Stderr() *os.File
	// Signal sends sig to the process; tree also signals its descendants.
	Signal(sig unix.Signal, tree bool) error
	// Resize sets the terminal's size; an error without a terminal.
	Resize(width, height uint16) error
	// Wait blocks until the process has exited and returns its exit code
	// (128+n when killed by signal n).
	Wait() (int, error)
	// Close releases the pipes and files; call it after Wait and after the
	// output is read.
	Close() error
}
