//go:build !linux

package oci

import (
	"fmt"
	"runtime"
)

// privilegedSetup: sandboxes need Linux.
func privilegedSetup(string) error { return fmt.Errorf("sandboxes need Linux, not %s", runtime.GOOS) }

func removeTestCgroups(string) {}
