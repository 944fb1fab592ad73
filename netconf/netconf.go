// Package netconf gives network interfaces static IPv4 addresses and brings
// them up, as an init does before anything listens: loopback always, the
// others as configured (eth0=10.0.2.15/24).
package netconf

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Address is an interface and the address it gets.
type Address struct {
	Interface string
	Prefix    netip.Prefix
}

func (a Address) String() string { return a.Interface + "=" + a.Prefix.String() }

// ParseAddress parses IFACE=ADDRESS/BITS, IPv4 only.
func ParseAddress(s string) (Address, error) {
	name, cidr, ok := strings.Cut(s, "=")
	if !ok || !ValidInterfaceName(name) {
		return Address{}, fmt.Errorf("%q: want INTERFACE=ADDRESS/BITS, such as eth0=10.0.2.15/24", s)
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() {
		return Address{}, fmt.Errorf("%q: %q is not an IPv4 address with a prefix length", s, cidr)
	}
	return Address{Interface: name, Prefix: p}, nil
}

// ValidInterfaceName applies the kernel's rule for a network interface
// name (dev_valid_name): 1 to 15 bytes, not "." or "..", no '/', ':' or
// white space (its isspace: also 0xa0, Latin-1's no-break space); and no
// NUL, which would end the name early in the ioctl's C string.
func ValidInterfaceName(name string) bool {
	if name == "" || len(name) >= 16 || name == "." || name == ".." {
		return false
	}
	for i := range len(name) {
		switch c := name[i]; {
		case c == '/', c == ':', c == 0, c == ' ', '\t' <= c && c <= '\r', c == 0xa0:
			return false
		}
	}
	return true
}

// Configurator applies addresses through its seams.
type Configurator struct {
	// Exists reports whether the interface is there yet.
	Exists func(iface string) bool
	// SetAddress gives an interface an address; Up brings it up.
	SetAddress func(iface string, p netip.Prefix) error
	Up         func(iface string) error
}

// Configure brings lo up and applies each address, waiting until ctx ends
// for interfaces whose driver is still probing.
func (c Configurator) Configure(ctx context.Context, addrs []Address) error {
	if err := c.Up("lo"); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	for _, a := range addrs {
		if err := c.waitFor(ctx, a.Interface); err != nil {
			return err
		}
		if err := c.SetAddress(a.Interface, a.Prefix); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
		if err := c.Up(a.Interface); err != nil {
			return fmt.Errorf("bring %s up: %w", a.Interface, err)
		}
	}
	return nil
}

func (c Configurator) waitFor(ctx context.Context, iface string) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if c.Exists(iface) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interface %s did not appear: %w", iface, ctx.Err())
		case <-tick.C:
		}
	}
}
