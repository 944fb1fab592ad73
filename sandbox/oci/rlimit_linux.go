package oci

import "golang.org/x/sys/unix"

// nofileLimit is want, capped at this process's hard RLIMIT_NOFILE.
func nofileLimit(want uint64) uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Max < want {
		return rl.Max
	}
	return want
}
