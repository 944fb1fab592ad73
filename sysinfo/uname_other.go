//go:build !linux

package sysinfo

import "errors"

func uname() (Uname, error) { return Uname{}, errors.New("uname is only read on Linux") }
