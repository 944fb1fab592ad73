//go:build linux

package agenttest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is a line of /proc/self/mountinfo.
type Mount struct {
	Point  string
	Root   string // the path, in its filesystem, of what is mounted
	FSType string
	Source string
}

func (m Mount) String() string {
	return fmt.Sprintf("%s %s (root %s) on %s", m.FSType, m.Source, m.Root, m.Point)
}

// MountsUnder lists the mounts at or below dir, in mount order.
func MountsUnder(dir string) []Mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root point options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		m := Mount{Root: unescape(fields[3]), Point: unescape(fields[4]), FSType: fields[sep+1], Source: unescape(fields[sep+2])}
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m)
		}
	}
	return out
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// MountAt returns the mount on point, the last one when they are stacked.
func MountAt(point string) (Mount, bool) {
	for _, m := range slices.Backward(MountsUnder(point)) {
		if m.Point == point {
			return m, true
		}
	}
	return Mount{}, false
}

// UnmountUnder unmounts everything at or below dir, deepest and latest
// first (detaching what is busy), and returns what it could not unmount.
// Nothing below dir may be removed while it returns anything.
func UnmountUnder(dir string) []string {
	var failed []string
	for _, m := range slices.Backward(MountsUnder(dir)) {
		if err := unix.Unmount(m.Point, 0); err != nil {
			if err := unix.Unmount(m.Point, unix.MNT_DETACH); err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", m.Point, err))
			}
		}
	}
	return failed
}

// LoopsBacking lists the loop devices (/dev/loopN) bound to file,
// recognised by its device and inode numbers.
func LoopsBacking(file string) []string {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return nil
	}
	var out []string
	bound, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, b := range bound {
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(b)))
		f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
		f.Close()
		if err == nil && info.Device == uint64(st.Dev) && info.Inode == uint64(st.Ino) {
			out = append(out, dev)
		}
	}
	return out
}

// DetachLoop detaches a loop device that nothing uses any more.
func DetachLoop(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
}

// ReleaseLoops waits for the loop devices over file to go, as autoclear
// devices do once nothing is mounted from them and nobody holds them, and
// detaches those still there after timeout. It returns those, which the
// caller reports: they were not autoclear.
func ReleaseLoops(file string, timeout time.Duration) (left []string, errs []error) {
	if WaitFor(timeout, func() bool { return len(LoopsBacking(file)) == 0 }) {
		return nil, nil
	}
	left = LoopsBacking(file)
	for _, l := range left {
		if err := DetachLoop(l); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", l, err))
		}
	}
	return left, errs
}

// WaitFor polls cond until it holds or timeout passes, and reports
// whether it held.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
