//go:build !linux

package pid1

import (
	"context"
	"errors"
)

// Run does nothing off Linux.
func (r *Reaper) Run(ctx context.Context) { <-ctx.Done() }

// BecomeSubreaper is only supported on Linux.
func BecomeSubreaper() error { return errNotLinux }

type sysProc struct{}

func (sysProc) children() ([]int, error)       { return nil, errors.New("only supported on Linux") }
func (sysProc) stat(int) (byte, uint64, error) { return 0, 0, errNotLinux }
func (sysProc) reap(int) (bool, error)         { return false, errNotLinux }
