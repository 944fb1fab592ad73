//go:build !linux

package disk

import (
	"context"
	"fmt"
	"runtime"
)

func (v *Volume) ensure(context.Context) (string, error) {
	return "", fmt.Errorf("data volume on %s: %w", runtime.GOOS, ErrNotSupported)
}

func freeBytes(path string) (uint64, error) {
	return 0, fmt.Errorf("free space of %s on %s: %w", path, runtime.GOOS, ErrNotSupported)
}

func (v *Volume) unmount() ([]string, error) { return nil, nil }
