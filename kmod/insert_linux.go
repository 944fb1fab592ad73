package kmod

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// InsertFile loads a module file with finit_module(2); a module that is
// already loaded is not an error. The kernel decompresses .xz and .zst
// modules itself where it was built to.
func InsertFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if ext := path[len(path)-3:]; ext == ".xz" || ext == "zst" {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// Release returns the running kernel's release, for /lib/modules/<release>.
func Release() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}
