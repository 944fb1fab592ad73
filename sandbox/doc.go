// Package sandbox runs sandboxes: short-lived, isolated OCI containers
// (runc or crun through go-runc) in which the agent runs untrusted workloads
// such as AI-written code.
//
// A Manager owns the sandboxes: their states and transitions, the event bus,
// TTL timers, the on-disk records that let a restarted agent re-adopt them,
// and the metrics. What touches the machine (the OCI runtime, mounts, image
// pulls) sits behind the small backend interface, whose real implementation
// is the OCI backend in oci_linux.go.
//
// On disk, under Config.StateDir:
//
//	sandboxes/<id>/record        the sandbox's record (spec, state, times, last
//	                             exit), two slots written in turn (recordStore)
//	sandboxes/<id>/config.json   the OCI bundle's spec
//	sandboxes/<id>/rootfs        the overlayfs root (lower: the image or rootfs dir)
//	sandboxes/<id>/init.sock     the socket through which the init starts processes
//	sandboxes/<id>/layer/        the writable layer: the overlay's upper and work
//	                             directories (a btrfs subvolume when StateDir is on btrfs)
//	snapshots/<id>/snapshot.json a checkpoint's record (the sandbox's spec, name, labels)
//	snapshots/<id>/layer/        its copy of the layer (a read-only btrfs snapshot, or a copy)
//	snapshots/<id>/backend.json  the lower layer and image config the layer goes over
//	images/<digest>/             unpacked image root filesystems, by manifest digest
//	runtime/                     the OCI runtime's --root
package sandbox
