package sandbox

import (
	"context"
	"errors"
	"net/netip"

	"github.com/arcbox/arcbox-agent/sandbox/network"
)

// allocAddress gives a bridged sandbox its address from the pool (the
// same one again for the same id), and none to a sandbox without a
// network. It is held until destroy.
func (m *Manager) allocAddress(id string, s Spec) (addr, gateway string, err error) {
	if s.NetworkMode != NetworkBridge {
		return "", "", nil
	}
	a, err := m.addrs.Allocate(id)
	switch {
	case errors.Is(err, network.ErrExhausted):
		return "", "", Classify(ErrConflict, err)
	case err != nil:
		return "", "", err
	}
	return a.String(), m.addrs.Gateway().String(), nil
}

// reserveAddress holds addr for id again: the record an earlier agent left.
func (m *Manager) reserveAddress(id, addr string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return err
	}
	return m.addrs.Reserve(id, a)
}

// destroy has the backend remove what sandbox id left but its record,
// then frees its address.
func (m *Manager) destroy(ctx context.Context, id string) error {
	if err := m.backend.Destroy(ctx, id); err != nil {
		return err
	}
	m.addrs.Release(id)
	return nil
}
