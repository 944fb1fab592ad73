//go:build !linux

package oci

// nofileLimit is want: sandboxes run on Linux only.
func nofileLimit(want uint64) uint64 { return want }
