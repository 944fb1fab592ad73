// Package disk gives containerd and dockerd their persistent storage: a
// btrfs data volume it detects, formats when that is safe, mounts and
// splits into subvolumes, plus the snapshots sandboxes are made from.
//
// # Layout
//
// The data device (a block device such as /dev/vdb, or a regular image file
// the package attaches to an autoclear loop device of its own, reusing a
// loop device that already backs that file) carries one btrfs. Its top
// level is mounted at Config.MountPoint (/run/arcbox/data) with
// compress=zstd:3; each configured subvolume (@docker, @containerd) is
// created there with BTRFS_IOC_SUBVOL_CREATE and mounted with subvol= on
// its target (/var/lib/docker, /var/lib/containerd). Mounts are made with
// mount(2); only mkfs.btrfs is run. Volume.Ensure is idempotent: it reads
// /proc/self/mountinfo and leaves alone what is mounted already, after
// checking it is this device's btrfs (anything else there is
// ErrMountConflict).
//
// # Never losing data
//
// Detect reads the first and the last MiB of the device. A complete btrfs
// is mounted, never formatted. A device is formatted only when those areas
// are all zero, and then without -f, so mkfs.btrfs's own probe is a second
// guard. Anything else, a named filesystem (ext2/3/4, xfs, swap, LUKS), a
// partition table (MBR, GPT) or unknown bytes, is refused with
// ErrForeignFilesystem and an error that names what was found and the
// override: --wipe-data-device or ARCBOX_WIPE_DATA_DEVICE=true, which the
// caller passes as Config.Wipe and which formats with mkfs.btrfs -f. Wipe
// never applies to a complete btrfs: one that does not mount is reported as
// ErrDamagedFilesystem, for a person to inspect.
//
// # A crash while formatting
//
// Before mkfs.btrfs runs, Ensure writes a format intent journal
// (StateDir/format-intent.json, fsynced, naming the device by its device
// and inode numbers) and removes it only after the new filesystem has
// mounted. mkfs.btrfs writes a temporary magic ("!BHRfS_M") until it has
// finished, so a format cut short leaves the device blank, with unknown
// bytes, or with an incomplete btrfs. On the next Ensure:
//
//   - journal present for this device: blank, unknown or incomplete btrfs
//     is formatted again (it holds nothing but our unfinished format), and
//     a complete btrfs that does not mount is formatted again too; one that
//     mounts completes the format and the journal is removed;
//   - no journal (the default StateDir is on tmpfs, so a reboot loses it):
//     an incomplete btrfs or unknown bytes are refused like foreign data,
//     naming the override; nothing is erased on a guess.
//
// The journal never authorises erasing a filesystem Detect can name: that
// always takes Wipe.
//
// # Snapshots
//
// NewSnapshotter returns a Snapshotter that uses btrfs subvolumes and
// snapshots (BTRFS_IOC_SNAP_CREATE_V2, BTRFS_IOC_SNAP_DESTROY) when its
// directory is on btrfs, and copies trees otherwise.
//
// The package has no global state: callers build a Volume from a Config and
// pass it down. Syscalls live in _linux.go files; elsewhere the same API
// compiles and returns ErrNotSupported.
package disk
