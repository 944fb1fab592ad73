package disk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// boundLoops lists the loop devices (loop0, loop7, ...) that have a backing
// file, from <sysDir>/block/loop*/loop/backing_file, with that file's path.
func boundLoops(sysDir string) (map[string]string, error) {
	files, err := filepath.Glob(filepath.Join(sysDir, "block", "loop*", "loop", "backing_file"))
	if err != nil {
		return nil, err
	}
	loops := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(f)))
		loops[name] = strings.TrimSuffix(string(b), "\n")
	}
	return loops, nil
}

// findLoop returns an open loop device already backed by the file st
// describes, whole (no offset, no size limit), or nil. Candidates come from
// sysfs; each is confirmed by the device and inode numbers LOOP_GET_STATUS64
// reports, so a path seen through another mount namespace cannot mislead it.
func findLoop(sysDir, devDir string, st *unix.Stat_t) (*os.File, error) {
	loops, err := boundLoops(sysDir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(loops))
	for n := range loops {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f, err := os.OpenFile(filepath.Join(devDir, n), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
		if err == nil && info.Device == uint64(st.Dev) && info.Inode == uint64(st.Ino) && info.Offset == 0 && info.Sizelimit == 0 {
			return f, nil
		}
		f.Close()
	}
	return nil, nil
}

// attachLoop binds file to a free loop device with LO_FLAGS_AUTOCLEAR and
// returns that device open. The kernel detaches an autoclear device when
// its last user goes, so the caller keeps the returned file open until the
// device is mounted (or to keep it, as the tests do); closing it before
// that detaches the device again.
func attachLoop(devDir, file string) (*os.File, error) {
	backing, err := os.OpenFile(file, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer backing.Close() // the loop device holds its own reference
	ctl, err := os.OpenFile(filepath.Join(devDir, "loop-control"), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach loop device: %w", err)
	}
	defer ctl.Close()
	// Another process may take the free device between GET_FREE and
	// CONFIGURE; the kernel says EBUSY and we ask again.
	for range 16 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("attach loop device: LOOP_CTL_GET_FREE: %w", err)
		}
		loop, err := os.OpenFile(filepath.Join(devDir, fmt.Sprintf("loop%d", n)), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("attach loop device: %w", err)
		}
		err = configureLoop(loop, backing, file)
		if err == nil {
			return loop, nil
		}
		loop.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("attach %s to %s: %w", file, loop.Name(), err)
		}
	}
	return nil, fmt.Errorf("attach loop device for %s: every free device was taken first: %w", file, unix.EBUSY)
}

// configureLoop binds backing to loop with LOOP_CONFIGURE, or with
// LOOP_SET_FD and LOOP_SET_STATUS64 on kernels older than 5.8.
func configureLoop(loop, backing *os.File, name string) error {
	info := unix.LoopInfo64{Flags: unix.LO_FLAGS_AUTOCLEAR}
	copy(info.File_name[:len(info.File_name)-1], name)
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info}
	err := unix.IoctlLoopConfigure(int(loop.Fd()), &cfg)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return err
	}
	if err := unix.IoctlSetInt(int(loop.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(loop.Fd()), &info); err != nil {
		_ = unix.IoctlSetInt(int(loop.Fd()), unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}
