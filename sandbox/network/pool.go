package network

import (
	"fmt"
	"net/netip"
)

// Reserve marks addr as held by id, as when sandboxes are adopted again after
// the agent restarts. It fails if addr is outside the range or is its network,
// gateway or broadcast address, if another id holds addr, or if id holds
// another address. Reserving the same id and address again is a no-op.
func (m *Manager) Reserve(id string, addr netip.Addr) error {
	if err := validID(id); err != nil {
		return err
	}
	if err := m.checkHostAddr(addr); err != nil {
		return fmt.Errorf("reserve %s for sandbox %q: %w", addr, id, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if holder, ok := m.byAddr[addr]; ok {
		if holder == id {
			return nil
		}
		return fmt.Errorf("reserve %s for sandbox %q: held by sandbox %q: %w", addr, id, holder, ErrConflict)
	}
	if held, ok := m.byID[id]; ok {
		return fmt.Errorf("reserve %s for sandbox %q: the sandbox holds %s: %w", addr, id, held, ErrConflict)
	}
	m.hold(id, addr)
	return nil
}

// Allocate gives id the lowest free address after the gateway. A sandbox that
// holds an address gets the same one again. When every address is held, the
// error wraps ErrExhausted and names the range.
func (m *Manager) Allocate(id string) (netip.Addr, error) {
	if err := validID(id); err != nil {
		return netip.Addr{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if addr, ok := m.byID[id]; ok {
		return addr, nil
	}
	for v := m.next; v <= m.last; v++ {
		addr := addrOf(v)
		if _, held := m.byAddr[addr]; held {
			continue
		}
		m.next = v + 1
		m.hold(id, addr)
		return addr, nil
	}
	m.next = m.last + 1
	return netip.Addr{}, fmt.Errorf("allocate an address for sandbox %q: all %d addresses of %s are held: %w",
		id, m.last-m.first+1, m.prefix, ErrExhausted)
}

// Release frees id's address; it is a no-op when id holds none.
func (m *Manager) Release(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	addr, ok := m.byID[id]
	if !ok {
		return
	}
	delete(m.byID, id)
	delete(m.byAddr, addr)
	if v := u32(addr); v < m.next {
		m.next = v
	}
}

// holder returns the id holding addr, if any.
func (m *Manager) holder(addr netip.Addr) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.byAddr[addr]
	return id, ok
}

// hold records the pair; m.mu must be held.
func (m *Manager) hold(id string, addr netip.Addr) {
	m.byID[id] = addr
	m.byAddr[addr] = id
}

// checkHostAddr accepts the addresses a sandbox may hold.
func (m *Manager) checkHostAddr(addr netip.Addr) error {
	if !addr.Is4() || !m.prefix.Contains(addr) {
		return fmt.Errorf("address %s: outside %s: %w", addr, m.prefix, ErrInvalid)
	}
	switch u32(addr) {
	case m.first - 2:
		return fmt.Errorf("address %s: the network address of %s: %w", addr, m.prefix, ErrInvalid)
	case m.first - 1:
		return fmt.Errorf("address %s: the gateway of %s: %w", addr, m.prefix, ErrInvalid)
	case m.last + 1:
		return fmt.Errorf("address %s: the broadcast address of %s: %w", addr, m.prefix, ErrInvalid)
	}
	return nil
}
