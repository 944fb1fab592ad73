//go:build !linux

package pid1

import (
	"errors"
	"os"
)

const (
	msNoSuid, msNoDev, msNoExec       = 0, 0, 0
	procMagic, sysfsMagic, tmpfsMagic = -1, -2, -3
)

var errNotLinux = errors.New("only supported on Linux")

// System is the Mounter of the real machine: none off Linux.
var System = Mounter{
	FSType:   func(string) (int64, error) { return 0, errNotLinux },
	Mount:    func(Mount) error { return errNotLinux },
	MkdirAll: os.MkdirAll,
}

// PowerOff is only supported on Linux.
func PowerOff() error { return errNotLinux }

// Reboot is only supported on Linux.
func Reboot() error { return errNotLinux }
