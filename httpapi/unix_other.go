//go:build !linux

package httpapi

import "net"

// bindUnix binds and listens on a unix socket at path; listenUnix then
// sets its mode.
func bindUnix(path string) (net.Listener, error) { return net.Listen("unix", path) }
