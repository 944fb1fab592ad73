//go:build !linux

package disk

import (
	"fmt"
	"runtime"
)

// NewSnapshotter returns the Snapshotter for dir; it needs Linux.
func NewSnapshotter(dir string) (Snapshotter, error) {
	return nil, fmt.Errorf("snapshots in %s on %s: %w", dir, runtime.GOOS, ErrNotSupported)
}
