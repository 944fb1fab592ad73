package shares

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/disk"
)

// System is the running system's Ops: mount(2) and umount2(2) on the real
// mount table, tags from /sys.
var System = Ops{
	Mount: func(tag, path string, flags Flags, data string) error {
		return unix.Mount(tag, path, "virtiofs", msFlags(flags), data)
	},
	Unmount:   func(path string) error { return unix.Unmount(path, 0) },
	Mkdir:     func(path string) error { return os.Mkdir(path, 0o755) },
	Rmdir:     unix.Rmdir,
	MountInfo: func() ([]disk.MountInfo, error) { return readMountInfo("/proc/self/mountinfo") },
	Tags:      func() (TagInfo, error) { return ReadTags("/sys") },
}

// msFlag pairs each flag with mount(2)'s.
var msFlag = []struct {
	flag Flags
	ms   uintptr
}{
	{ReadOnly, unix.MS_RDONLY}, {NoSuid, unix.MS_NOSUID}, {NoDev, unix.MS_NODEV}, {NoExec, unix.MS_NOEXEC},
	{Sync, unix.MS_SYNCHRONOUS}, {DirSync, unix.MS_DIRSYNC}, {NoAtime, unix.MS_NOATIME},
	{NoDirAtime, unix.MS_NODIRATIME}, {RelAtime, unix.MS_RELATIME}, {StrictAtime, unix.MS_STRICTATIME},
	{LazyTime, unix.MS_LAZYTIME},
}

// msFlags translates flags to mount(2)'s.
func msFlags(flags Flags) uintptr {
	var ms uintptr
	for _, f := range msFlag {
		if flags&f.flag != 0 {
			ms |= f.ms
		}
	}
	return ms
}
