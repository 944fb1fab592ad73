//go:build !linux

package kmod

import "errors"

var errNotLinux = errors.New("kernel modules are only loaded on Linux")

// InsertFile is only supported on Linux.
func InsertFile(string) error { return errNotLinux }

// Release is only supported on Linux.
func Release() (string, error) { return "", errNotLinux }
