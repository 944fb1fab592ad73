// Package sandbox runs sandboxes: short-lived, isolated OCI containers
// (runc or crun through go-runc) in which the agent runs untrusted workloads
// such as AI-written code.
//
// A Manager owns the sandboxes: their states and transitions, the event bus,
// TTL timers, the bridge address pool, the on-disk records that let a
// restarted agent re-adopt them, and the metrics. What touches the machine
// (the OCI runtime, mounts, image pulls, network setup) sits behind the
// Backend interface, whose real implementation is package sandbox/oci's;
// cmd/arcbox-agent builds it and hands it to NewManager.
//
// The Manager's files follow a sandbox's life: manager.go (the Manager,
// its Config, Close), create.go (Create, the start, the init's watch),
// run.go (Run and Exec) and output.go (the output pump), runs.go (runs by
// id: detached runs, listing, signals, stdin, output reads) and
// runbuffer.go (a run's bounded output), snapshot.go
// (Checkpoint, Restore), stop.go (Stop, Remove, the TTL), adopt.go
// (re-adoption after a restart), record.go (the records), state.go (state
// changes and their events), query.go (Get, List), address.go and idmap.go
// (the address and user id ranges it hands out). Beside the life cycle:
// files.go (Files: a live sandbox's file tree, through Backend.OpenFiles),
// stats.go (Stats: its cgroup's resource use, through Backend.Stats) and
// imageconfig.go (ImageConfig, ResolveCmd: what its image gives the
// processes that do not say, through Backend.ImageConfig).
//
// # Locks
//
// Three mutexes guard a sandbox, always taken in this order:
//
//	sb.opMu       one lifecycle operation at a time (start, stop, remove,
//	              checkpoint, the init's watch); held across Backend calls
//	sb.persistMu  orders the record writes, and a write with the removal
//	              of the sandbox's directory
//	m.mu          the Manager's maps and every sandbox's fields; held only
//	              briefly, never across a Backend call or a record write
//
// so m.mu is taken last, and a function that needs it held is named
// ...Locked. The one exception is admit, which takes the opMu of a sandbox
// it is making while holding m.mu: nothing else can hold that opMu yet,
// since the sandbox is found only through m.boxes. m.idleMu (OnIdle's timer),
// the bus's lock and a run's output buffer's lock are leaves: nothing is
// taken while they are held.
//
// # Runs
//
// Every process started in a sandbox is a run with an id: attached (Run,
// Exec: its client reads its output as it comes) or detached (StartRun,
// the create request's cmd, or an attached one with
// Process.DetachOnDisconnect once its client goes). The rules, in one
// place:
//
//   - A sandbox is running while at least one run is in progress, up to
//     Config.MaxRuns at once (past it ErrConflict), and ready once the
//     last ends (event idle, with the last one's exit code).
//   - Each run's output is kept, bounded by Config.RunOutputBytes: the
//     oldest bytes are dropped and that is reported (RunInfo.OutputFirst);
//     it is read from any offset (ReadRunOutput), following if asked.
//   - An attached run whose client goes away is hung up as a terminal
//     hangs up: SIGHUP to its process and its descendants, then SIGKILL to
//     those left after Config.HangupGrace (exit 129 when SIGHUP ended
//     it, 137 when it had to be killed). A timeout kills at once (137); a
//     stop sends SIGTERM, then SIGKILL.
//   - Runs are kept in memory, the last 100 ended ones too; the record
//     lists those in progress, so that a restarted agent reports them
//     lost and kills what is left of them (Backend.KillWorkloads).
//   - run.started and run.exited go through the event journal.
//
// On disk, under Config.StateDir:
//
//	sandboxes/<id>/record        the sandbox's record (spec, state, times, last
//	                             exit), two slots written in turn (recordStore)
//	snapshots/<id>/snapshot.json a checkpoint's record (the sandbox's spec, name, labels)
//
// and, written by the OCI backend (package sandbox/oci):
//
//	sandboxes/<id>/config.json   the OCI bundle's spec
//	sandboxes/<id>/rootfs        the overlayfs root (lower: the image or rootfs dir)
//	sandboxes/<id>/init.sock     the socket through which the init starts processes
//	sandboxes/<id>/layer/        the writable layer: the overlay's upper and work
//	                             directories (a btrfs subvolume when StateDir is on btrfs)
//	snapshots/<id>/layer/        its copy of the layer (a read-only btrfs snapshot, or a copy)
//	snapshots/<id>/backend.json  the lower layer and image config the layer goes over
//	sandboxes/<id>/backend.json  what the sandbox was made from: lower layer, image
//	                             config, its user namespace's id range
//	images/<digest>/             unpacked image root filesystems, by manifest digest
//	rootfs/                      the root filesystems a create's rootfs may name
//	volumes/<id>/                a sandbox's own volume directory, made on first
//	                             mount, owned by its root, removed with it
//	runtime/                     the OCI runtime's --root
package sandbox
