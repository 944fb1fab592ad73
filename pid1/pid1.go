// Package pid1 does what the agent must do when it is the VM's init: mount
// the kernel filesystems the rest assumes, reap orphaned processes without
// stealing the exits of children the agent owns, and power the machine off
// instead of exiting (an init that exits panics the kernel).
package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
)

// IsInit reports whether this process is the machine's init.
func IsInit() bool { return os.Getpid() == 1 }

// Mount is one filesystem the agent needs.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	Magic                  int64 // statfs f_type of the filesystem when mounted
}

// EssentialMounts are what the seed's init mounted before the agent ran.
var EssentialMounts = []Mount{
	{Source: "proc", Target: "/proc", FSType: "proc", Flags: msNoSuid | msNoDev | msNoExec, Magic: procMagic},
	{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: msNoSuid | msNoDev | msNoExec, Magic: sysfsMagic},
	{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: msNoSuid, Data: "mode=0755", Magic: tmpfsMagic},
	{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: msNoSuid | msNoDev, Data: "mode=0755", Magic: tmpfsMagic},
}

// Mounter is the seam for mounting; MountFS is the real one.
type Mounter struct {
	// FSType returns the statfs f_type of the filesystem holding path.
	FSType func(path string) (int64, error)
	// Mount mounts a filesystem.
	Mount func(m Mount) error
	// MkdirAll makes a mount point.
	MkdirAll func(path string, perm os.FileMode) error
}

// MountMissing mounts each of mounts whose target does not already hold a
// filesystem of its kind, and says what it did.
func (m Mounter) MountMissing(log *slog.Logger, mounts []Mount) error {
	var errs []error
	for _, mt := range mounts {
		if t, err := m.FSType(mt.Target); err == nil && t == mt.Magic {
			continue
		}
		if err := m.MkdirAll(mt.Target, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("mkdir %s: %w", mt.Target, err))
			continue
		}
		if err := m.Mount(mt); err != nil {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", mt.FSType, mt.Target, err))
			continue
		}
		log.Info("mounted", "fstype", mt.FSType, "target", mt.Target)
	}
	return errors.Join(errs...)
}
