package sysinfo

import (
	"errors"
	"io/fs"

	"golang.org/x/sys/unix"
)

// PressureAbsent reports whether reading a pressure file failed because
// the kernel keeps no pressure there (see PressureSet): the file is
// missing (no PSI, psi=0) or refuses reads (EOPNOTSUPP: a cgroup whose
// cgroup.pressure is 0).
func PressureAbsent(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.EOPNOTSUPP)
}

// statfsSpace is the space of the filesystem at path, in bytes.
func statfsSpace(path string) (total, used, free uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, 0, &fs.PathError{Op: "statfs", Path: path, Err: err}
	}
	bs := uint64(st.Bsize)
	return st.Blocks * bs, (st.Blocks - st.Bfree) * bs, st.Bavail * bs, nil
}
