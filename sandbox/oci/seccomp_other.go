//go:build !linux

package oci

import (
	"errors"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// seccompProfile: sandboxes run on Linux only.
func seccompProfile([]string) (*specs.LinuxSeccomp, error) {
	return nil, errors.New("seccomp profiles are Linux's")
}
