//go:build !linux

package oci

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// Backend is the OCI backend, on Linux only.
type Backend struct{ sandbox.Backend }

// New: OCI containers need Linux.
func New(context.Context, Config) (*Backend, error) {
	return nil, fmt.Errorf("OCI sandboxes need Linux, not %s: %w", runtime.GOOS, sandbox.ErrUnavailable)
}

// extractTar: unpacking images needs Linux (openat2).
func extractTar(io.Reader, string) error {
	return fmt.Errorf("unpacking images needs Linux, not %s: %w", runtime.GOOS, sandbox.ErrUnavailable)
}
