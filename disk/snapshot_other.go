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

// NewCopySnapshotter returns the copying Snapshotter; it needs Linux.
func NewCopySnapshotter() Snapshotter { return unsupported{} }

type unsupported struct{}

func (unsupported) Create(path string) error { return fmt.Errorf("%s: %w", path, ErrNotSupported) }
func (unsupported) Snapshot(src, dst string, readonly bool) error {
	return fmt.Errorf("%s: %w", src, ErrNotSupported)
}
func (unsupported) Delete(path string) error { return fmt.Errorf("%s: %w", path, ErrNotSupported) }
