package pid1

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

const (
	msNoSuid = unix.MS_NOSUID
	msNoDev  = unix.MS_NODEV
	msNoExec = unix.MS_NOEXEC

	procMagic  = unix.PROC_SUPER_MAGIC
	sysfsMagic = unix.SYSFS_MAGIC
	tmpfsMagic = unix.TMPFS_MAGIC // devtmpfs reports tmpfs's magic
)

// System is the Mounter of the real machine.
var System = Mounter{
	FSType: func(path string) (int64, error) {
		var st unix.Statfs_t
		if err := unix.Statfs(path, &st); err != nil {
			return 0, err
		}
		return int64(st.Type), nil
	},
	Mount: func(m Mount) error {
		return unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	},
	MkdirAll: os.MkdirAll,
}

// PowerOff flushes the filesystems and powers the machine off. It returns
// only if the kernel refused.
func PowerOff() error {
	unix.Sync()
	// Give the kernel's own writeback a moment after sync on slow disks.
	time.Sleep(50 * time.Millisecond)
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// Reboot flushes the filesystems and restarts the machine. It returns only
// if the kernel refused.
func Reboot() error {
	unix.Sync()
	time.Sleep(50 * time.Millisecond)
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}
