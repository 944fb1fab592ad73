package runtime

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// What the test reads from /proc and /sys about the machine: mounts, loop
// devices, processes. It only ever changes what it made itself.

// mount is a line of /proc/self/mountinfo.
type mount struct {
	point  string
	root   string
	fstype string
	source string
}

func (m mount) String() string {
	return fmt.Sprintf("%s %s (root %s) on %s", m.fstype, m.source, m.root, m.point)
}

// mountsUnder lists the mounts at or below dir, in mount order.
func mountsUnder(dir string) []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root point options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		m := mount{root: unescape(fields[3]), point: unescape(fields[4]), fstype: fields[sep+1], source: unescape(fields[sep+2])}
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
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

// mountAt returns the mount on point, the last one when they are stacked.
func mountAt(point string) (mount, bool) {
	ms := mountsUnder(point)
	for _, m := range slices.Backward(ms) {
		if m.point == point {
			return m, true
		}
	}
	return mount{}, false
}

// unmountUnder unmounts everything at or below dir, deepest and latest
// first, and returns what it could not unmount.
func unmountUnder(dir string) []string {
	var failed []string
	for _, m := range slices.Backward(mountsUnder(dir)) {
		if err := unix.Unmount(m.point, 0); err != nil {
			// Busy: detach it, and say so.
			if err := unix.Unmount(m.point, unix.MNT_DETACH); err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", m.point, err))
			}
		}
	}
	return failed
}

// loopsBacking lists the loop devices (/dev/loopN) bound to the file,
// recognised by its device and inode numbers.
func loopsBacking(file string) []string {
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

// detachLoop detaches a loop device that nothing uses any more.
func detachLoop(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
}

// proc is a process as /proc shows it.
type proc struct {
	pid, ppid int
	comm      string
	cmdline   string
}

func (p proc) String() string { return fmt.Sprintf("%d (%s): %s", p.pid, p.comm, p.cmdline) }

// readProc reads pid's /proc entry; ok is false when it is gone or a
// zombie (it has ended; its parent has not reaped it yet).
func readProc(pid int) (p proc, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+2 >= len(s) {
		return p, false
	}
	fields := strings.Fields(s[end+2:])
	if len(fields) < 2 || fields[0] == "Z" {
		return p, false
	}
	p.pid, p.comm = pid, s[open+1:end]
	p.ppid, _ = strconv.Atoi(fields[1])
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	p.cmdline = strings.TrimSpace(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
	return p, true
}

func alive(pid int) bool {
	_, ok := readProc(pid)
	return ok
}

// processes lists the live processes.
func processes() []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			out = append(out, p)
		}
	}
	return out
}

// childrenOf maps the command names of ppid's children to their pids.
func childrenOf(ppid int) map[string]int {
	out := map[string]int{}
	for _, p := range processes() {
		if p.ppid == ppid {
			out[p.comm] = p.pid
		}
	}
	return out
}

// processesOf lists the live processes that belong to what the test
// started under dir: those whose command line names dir (the agent, the
// daemons, the shims) and those whose root is below it (containers).
func processesOf(dir string) []proc {
	var out []proc
	for _, p := range processes() {
		root, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", p.pid))
		if strings.Contains(p.cmdline, dir) || strings.HasPrefix(root, dir+"/") {
			out = append(out, p)
		}
	}
	return out
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
