//go:build !linux

package netconf

import (
	"errors"
	"net/netip"
)

var errNotLinux = errors.New("interfaces are only configured on Linux")

// System is not available off Linux.
var System = Configurator{
	Exists:     func(string) bool { return false },
	SetAddress: func(string, netip.Prefix) error { return errNotLinux },
	Up:         func(string) error { return errNotLinux },
}
