//go:build !linux

package sysinfo

import (
	"errors"
	"io/fs"
)

// PressureAbsent reports whether reading a pressure file failed because
// the kernel keeps no pressure there: elsewhere than Linux, never any.
func PressureAbsent(err error) bool { return errors.Is(err, fs.ErrNotExist) }

func statfsSpace(string) (total, used, free uint64, err error) {
	return 0, 0, 0, errors.New("statfs is only read on Linux")
}
