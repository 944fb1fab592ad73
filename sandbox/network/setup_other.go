//go:build !linux

package network

import (
	"context"
	"errors"
	"net/netip"
)

var errNotLinux = errors.New("sandbox networking needs Linux")

// Setup is not available off Linux.
func (m *Manager) Setup(context.Context, string, netip.Addr) (Endpoint, error) {
	return Endpoint{}, errNotLinux
}

// Teardown is not available off Linux.
func (m *Manager) Teardown(string) error { return errNotLinux }
