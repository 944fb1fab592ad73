//go:build linux

// Package agenttest runs the agent binary for the end-to-end tests and the
// cmd tests, as the host would: it builds the binary once per test binary,
// gives it flags that keep its every path under a directory of the
// test's, starts and stops it by its PID, reads its log, and gives the
// generated client that checks every exchange against openapi.yaml. It
// also holds what those tests share around the agent: the cleanup of the
// mounts and loop devices it leaves, a free port, the pointer helpers.
package agenttest

import (
	"net"
	"testing"
)

// Ptr returns a pointer to v, for the API's optional fields.
func Ptr[T any](v T) *T { return &v }

// Deref returns what p points to, or the zero value when p is nil.
func Deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// FreePort returns a TCP port free on 127.0.0.1 when it is called. Another
// process could take it before the caller binds it: tests use it inside
// network namespaces of their own, or where nothing else binds ports.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
