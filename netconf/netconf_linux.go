package netconf

import (
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// System configures the machine's interfaces with ioctls.
var System = Configurator{Exists: exists, SetAddress: setAddress, Up: up}

func exists(iface string) bool {
	_, err := net.InterfaceByName(iface)
	return err == nil
}

func withSocket(f func(fd int) error) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return f(fd)
}

func setAddress(iface string, p netip.Prefix) error {
	return withSocket(func(fd int) error {
		ifr, err := unix.NewIfreq(iface)
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(p.Addr().AsSlice()); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
			return err
		}
		bits := p.Bits()
		var m [4]byte
		for i := range bits {
			m[i/8] |= 0x80 >> (i % 8)
		}
		if err := ifr.SetInet4Addr(m[:]); err != nil {
			return err
		}
		return unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr)
	})
}

func up(iface string) error {
	return withSocket(func(fd int) error {
		ifr, err := unix.NewIfreq(iface)
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
			return err
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
	})
}
