package disk

// Snapshotter makes the directories sandboxes run in: empty volumes, and
// snapshots of them. NewSnapshotter picks btrfs subvolumes when the
// directory is on btrfs and a copying fallback otherwise; both behave the
// same through this interface, only the cost differs (a btrfs snapshot takes
// constant time, a copy grows with the tree).
//
// Paths are absolute, on the filesystem of the directory the Snapshotter
// was made for; the parent of a new path must exist and the path itself
// must not.
type Snapshotter interface {
	// Create makes an empty volume at path: a subvolume on btrfs, a
	// directory otherwise.
	Create(path string) error
	// Snapshot makes dst an independent copy of src as it is now: writes to
	// either side are not seen by the other. On btrfs src must be a
	// subvolume (made by Create or Snapshot). A read-only snapshot refuses
	// every write, root's included: a read-only subvolume on btrfs; files
	// and directories marked immutable (chattr +i) by the fallback, which
	// fails rather than pretend when the filesystem has no such flag.
	Snapshot(src, dst string, readonly bool) error
	// Delete removes a volume or snapshot with everything in it, read-only
	// ones and nested btrfs subvolumes included. A missing path is not an
	// error.
	Delete(path string) error
}
