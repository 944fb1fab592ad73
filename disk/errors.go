package disk

import "errors"

// Error classes. Every error this package returns for one of these cases wraps
// the class with %w, next to the operand it concerns, so callers map them to
// answers with errors.Is.
var (
	// ErrInvalidConfig: a Config field is missing or malformed.
	ErrInvalidConfig = errors.New("invalid data volume configuration")

	// ErrDeviceMissing: the data device does not exist.
	ErrDeviceMissing = errors.New("data device missing")

	// ErrForeignFilesystem: the device carries another filesystem, a
	// partition table, an incomplete btrfs or unrecognised data, so it was
	// not formatted. The error names what was found and the override.
	ErrForeignFilesystem = errors.New("device carries another filesystem or data")

	// ErrDamagedFilesystem: the device carries a complete btrfs superblock
	// but the filesystem does not mount. It is never reformatted
	// automatically, whatever the Wipe setting.
	ErrDamagedFilesystem = errors.New("btrfs on device does not mount")

	// ErrMountConflict: something other than the expected volume is already
	// mounted on a path this package would mount on.
	ErrMountConflict = errors.New("another filesystem is mounted there")

	// ErrNotSupported: the operation needs Linux (or btrfs features the
	// kernel lacks).
	ErrNotSupported = errors.New("not supported on this system")
)

// wipeHint is the operator setting that lets Ensure format over foreign data.
// The wording is part of the contract: errors and docs quote it.
const wipeHint = "set --wipe-data-device or ARCBOX_WIPE_DATA_DEVICE=true to erase it and format btrfs"
