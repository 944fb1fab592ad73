//go:build !linux

// Package initproc is a sandbox's process 1 (Linux only).
package initproc

import "os"

// Main exits: a sandbox init needs Linux.
func Main() {
	os.Stderr.WriteString("sandbox-init: needs Linux\n")
	os.Exit(1)
}
