//go:build !linux

package startup

import "time"

// ProcessStart returns now: only Linux says when a process started.
func ProcessStart() time.Time { return time.Now() }
