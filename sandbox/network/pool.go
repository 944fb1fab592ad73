package network

import (
	"fmt"
	"net/netip"
	"sync"
)

// Pool hands out the addresses of a sandbox range: the sandbox manager's
// own, in memory (Reserve takes the recorded ones back after a restart).
// Its methods are safe for concurrent use.
type Pool struct {
	prefix  netip.Prefix
	gateway netip.Addr
	first   uint32 // lowest address a sandbox may hold (gateway + 1)
	last    uint32 // highest address a sandbox may hold (broadcast - 1)

	mu     sync.Mutex
	byID   map[string]netip.Addr
	byAddr map[netip.Addr]string
	// next is at most the lowest free address: all in [first, next) are held.
	next uint32
}

// NewPool returns an empty pool over cidr, the range in its masked form,
// e.g. 172.20.0.0/16: IPv4, a prefix length from 8 to 30. Its first
// address (172.20.0.1) is the gateway, the bridge's address. A form with
// host bits set, such as 172.20.0.5/16, is rejected rather than guessed at.
func NewPool(cidr netip.Prefix) (*Pool, error) {
	p := cidr
	switch {
	case !p.IsValid():
		return nil, errorf(ErrInvalid, "CIDR: missing or malformed")
	case !p.Addr().Is4():
		return nil, errorf(ErrInvalid, "CIDR %s: not an IPv4 range", p)
	case p.Bits() < 8 || p.Bits() > 30:
		return nil, errorf(ErrInvalid, "CIDR %s: prefix length must be from /8 to /30", p)
	case p.Masked() != p:
		return nil, errorf(ErrInvalid, "CIDR %s: host bits set; the range is %s", p, p.Masked())
	case !isUnicastRange(p):
		return nil, errorf(ErrInvalid, "CIDR %s: overlaps 0.0.0.0/8, loopback, multicast or reserved addresses", p)
	}
	network := u32(p.Addr())
	broadcast := network | (1<<(32-p.Bits()) - 1)
	return &Pool{
		prefix:  p,
		gateway: addrOf(network + 1),
		first:   network + 2,
		last:    broadcast - 1,
		next:    network + 2,
		byID:    make(map[string]netip.Addr),
		byAddr:  make(map[netip.Addr]string),
	}, nil
}

// Gateway returns the bridge's address, the range's first address.
func (p *Pool) Gateway() netip.Addr { return p.gateway }

// Prefix returns the sandbox range.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Reserve marks addr as held by id, as when sandboxes are adopted again after
// the agent restarts. It fails if addr is outside the range or is its network,
// gateway or broadcast address, if another id holds addr, or if id holds
// another address. Reserving the same id and address again is a no-op.
func (p *Pool) Reserve(id string, addr netip.Addr) error {
	if err := validID(id); err != nil {
		return err
	}
	if err := p.checkHostAddr(addr); err != nil {
		return fmt.Errorf("reserve %s for sandbox %q: %w", addr, id, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if holder, ok := p.byAddr[addr]; ok {
		if holder == id {
			return nil
		}
		return errorf(ErrConflict, "reserve %s for sandbox %q: held by sandbox %q", addr, id, holder)
	}
	if held, ok := p.byID[id]; ok {
		return errorf(ErrConflict, "reserve %s for sandbox %q: the sandbox holds %s", addr, id, held)
	}
	p.hold(id, addr)
	return nil
}

// Allocate gives id the lowest free address after the gateway. A sandbox that
// holds an address gets the same one again. When every address is held, the
// error wraps ErrExhausted and names the range.
func (p *Pool) Allocate(id string) (netip.Addr, error) {
	if err := validID(id); err != nil {
		return netip.Addr{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if addr, ok := p.byID[id]; ok {
		return addr, nil
	}
	for v := p.next; v <= p.last; v++ {
		addr := addrOf(v)
		if _, held := p.byAddr[addr]; held {
			continue
		}
		p.next = v + 1
		p.hold(id, addr)
		return addr, nil
	}
	p.next = p.last + 1
	return netip.Addr{}, errorf(ErrExhausted, "allocate an address for sandbox %q: all %d addresses of %s are held",
		id, p.last-p.first+1, p.prefix)
}

// Release frees id's address; it is a no-op when id holds none.
func (p *Pool) Release(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	addr, ok := p.byID[id]
	if !ok {
		return
	}
	delete(p.byID, id)
	delete(p.byAddr, addr)
	if v := u32(addr); v < p.next {
		p.next = v
	}
}

// holder returns the id holding addr, if any.
func (p *Pool) holder(addr netip.Addr) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.byAddr[addr]
	return id, ok
}

// hold records the pair; p.mu must be held.
func (p *Pool) hold(id string, addr netip.Addr) {
	p.byID[id] = addr
	p.byAddr[addr] = id
}

// checkHostAddr accepts the addresses a sandbox may hold.
func (p *Pool) checkHostAddr(addr netip.Addr) error {
	if !addr.Is4() || !p.prefix.Contains(addr) {
		return errorf(ErrInvalid, "address %s: outside %s", addr, p.prefix)
	}
	switch u32(addr) {
	case p.first - 2:
		return errorf(ErrInvalid, "address %s: the network address of %s", addr, p.prefix)
	case p.first - 1:
		return errorf(ErrInvalid, "address %s: the gateway of %s", addr, p.prefix)
	case p.last + 1:
		return errorf(ErrInvalid, "address %s: the broadcast address of %s", addr, p.prefix)
	}
	return nil
}

// isUnicastRange reports whether p avoids the ranges no bridge may use.
func isUnicastRange(p netip.Prefix) bool {
	for _, bad := range []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("224.0.0.0/3"), // multicast, reserved, broadcast
	} {
		if bad.Overlaps(p) {
			return false
		}
	}
	return true
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrOf(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
