package disk

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// device is the block device Ensure works on.
type device struct {
	path string   // block device to read and mount: Config.Device, or the loop device over it
	id   string   // identity recorded in the format journal
	rdev uint64   // device number of path
	hold *os.File // open loop device keeping an autoclear loop alive until mounted; nil for a block device
	note string   // what opening did, for Ensure's note
}

func (d *device) close() {
	if d.hold != nil {
		d.hold.Close()
	}
}

// openDevice resolves Config.Device to a block device. An image file gets
// the loop device already backing it, or a new autoclear one.
func (v *Volume) openDevice() (*device, error) {
	name := v.cfg.Device
	var st unix.Stat_t
	if err := unix.Stat(name, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("data device %s: %w", name, ErrDeviceMissing)
		}
		return nil, fmt.Errorf("data device %s: %w", name, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		rdev := uint64(st.Rdev)
		return &device{path: name, rdev: rdev, id: fmt.Sprintf("block %d:%d", unix.Major(rdev), unix.Minor(rdev))}, nil
	case unix.S_IFREG:
		return v.openImage(name, &st)
	}
	return nil, fmt.Errorf("data device %s: neither a block device nor a regular file: %w", name, ErrInvalidConfig)
}

func (v *Volume) openImage(name string, st *unix.Stat_t) (*device, error) {
	d := &device{id: fmt.Sprintf("file %d:%d inode %d", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)), st.Ino)}
	loop, err := findLoop(v.cfg.SysDir, v.cfg.DevDir, st)
	if err != nil {
		return nil, fmt.Errorf("data device %s: find loop device: %w", name, err)
	}
	if loop == nil {
		if loop, err = attachLoop(v.cfg.DevDir, name); err != nil {
			return nil, fmt.Errorf("data device %s: %w", name, err)
		}
		d.note = "attached " + name + " to " + loop.Name()
		v.log.Info("attached image file to loop device", "loop", loop.Name())
	}
	var lst unix.Stat_t
	if err := unix.Fstat(int(loop.Fd()), &lst); err != nil {
		loop.Close()
		return nil, fmt.Errorf("data device %s: stat %s: %w", name, loop.Name(), err)
	}
	d.path, d.rdev, d.hold = loop.Name(), uint64(lst.Rdev), loop
	return d, nil
}

// detectDevice runs Detect on the device at path.
func detectDevice(path string) (Signature, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Signature{}, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Signature{}, fmt.Errorf("size of %s: %w", path, err)
	}
	sig, err := Detect(f, size)
	if err != nil {
		return Signature{}, fmt.Errorf("%s: %w", path, err)
	}
	return sig, nil
}

// isDevice reports whether path is the block device rdev.
func isDevice(path string, rdev uint64) bool {
	var st unix.Stat_t
	return unix.Stat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && uint64(st.Rdev) == rdev
}

// freeBytes returns the space available to unprivileged writers on the
// filesystem holding path.
func freeBytes(path string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	return fs.Bavail * uint64(fs.Bsize), nil
}
