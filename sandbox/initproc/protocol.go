package initproc

// The exec protocol between the agent and a sandbox's init.
//
// The agent binds a SOCK_SEQPACKET unix socket in the sandbox's bundle (on
// the host; nothing of it is visible in the sandbox) and hands the
// listening descriptor to the init as its fd 3 (`runc run --preserve-fds
// 1`). For each process it connects and sends a Start, with the process's
// stdin, stdout and stderr as SCM_RIGHTS; for a terminal none: the init
// makes the terminal in the sandbox's own devpts (so the process can find
// its name) and passes its master back with its first reply. The init
// answers Started (or Exited at once, when the program cannot be started:
// it has then written why on the process's stderr, or terminal), later
// Exited; meanwhile the agent may send Signal. One process per
// connection; the init closes it after Exited.
//
// The init starts the process as its own child, in its own session, with
// the init's namespaces, cgroup, seccomp filter, no-new-privileges and
// capability bounding set (what `runc exec` gives it too): only the
// credentials, directory and environment come from Start. Being the
// parent, it sees the exit status the moment the process ends, however
// long its background children keep its output open.

// ListenFd is the init's descriptor for the agent's listening socket.
const ListenFd = 3

// MaxMessage bounds one message of the protocol.
const MaxMessage = 1 << 20

// Start asks the init to start a process.
type Start struct {
	Args   []string `json:"args"` // Args[0] is looked up in Env's PATH when it has no slash
	Env    []string `json:"env"`
	Dir    string   `json:"dir"`
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	// TTY: the process runs on a new terminal, its controlling one, of
	// Width x Height (when not zero); no descriptors come with the Start.
	TTY    bool   `json:"tty,omitempty"`
	Width  uint16 `json:"width,omitempty"`
	Height uint16 `json:"height,omitempty"`
}

// Signal asks the init to signal the process (only it knows whether the
// pid is still its child's). The agent kills a process's whole tree
// itself, from the host.
type Signal struct {
	Signal int `json:"signal"`
}

// Reply is what the init sends: Started with the process's pid (in the
// sandbox's pid namespace), then Exited with its exit code (128+n when
// killed by signal n; 127 when it could not be started).
type Reply struct {
	Started bool `json:"started,omitempty"`
	Pid     int  `json:"pid,omitempty"`
	Exited  bool `json:"exited,omitempty"`
	Code    int  `json:"code,omitempty"`
}

// ExitNotStarted is the exit code of a process that could not be started,
// as a shell reports a command it cannot find or run.
const ExitNotStarted = 127
