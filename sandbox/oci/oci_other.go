//go:build !linux

package oci

import (
	"context"
	"io"
	"runtime"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// Backend is the OCI backend, on Linux only.
type Backend struct{ sandbox.Backend }

// New: OCI containers need Linux.
func New(context.Context, Config) (*Backend, error) {
	return nil, sandbox.Errorf(sandbox.ErrUnavailable, "OCI sandboxes need Linux, not %s", runtime.GOOS)
}

// extractTar: unpacking images needs Linux (openat2).
func extractTar(io.Reader, string) error {
	return sandbox.Errorf(sandbox.ErrUnavailable, "unpacking images needs Linux, not %s", runtime.GOOS)
}
