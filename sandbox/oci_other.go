//go:build !linux

package sandbox

import (
	"context"
	"fmt"
	"io"
	"runtime"
)

// newOCIBackend: OCI containers need Linux.
func newOCIBackend(context.Context, Config) (backend, error) {
	return nil, fmt.Errorf("OCI sandboxes need Linux, not %s: %w", runtime.GOOS, ErrUnavailable)
}

// extractTar: unpacking images needs Linux (openat2).
func extractTar(io.Reader, string) error {
	return fmt.Errorf("unpacking images needs Linux, not %s: %w", runtime.GOOS, ErrUnavailable)
}
