//go:build !linux

package sandbox

import "os"

// setNoCOW: only Linux filesystems have the flag.
func setNoCOW(*os.File) {}
