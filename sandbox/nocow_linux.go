package sandbox

import (
	"os"

	"golang.org/x/sys/unix"
)

// fsNoCOWFL is FS_NOCOW_FL from linux/fs.h (chattr +C).
const fsNoCOWFL = 0x00800000

// setNoCOW marks an empty file no-copy-on-write where the filesystem has
// the notion (btrfs), so that overwriting it in place needs no new space.
// Elsewhere it does nothing: ext4, xfs and tmpfs overwrite in place anyway.
func setNoCOW(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		flags, err := unix.IoctlGetUint32(int(fd), unix.FS_IOC_GETFLAGS)
		if err != nil || flags&fsNoCOWFL != 0 {
			return
		}
		_ = unix.IoctlSetPointerInt(int(fd), unix.FS_IOC_SETFLAGS, int(flags|fsNoCOWFL))
	})
}
