package disk

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// MountInfo is one line of /proc/<pid>/mountinfo (see proc(5)), with the
// kernel's octal escapes (\040 for a space, ...) decoded.
type MountInfo struct {
	ID, ParentID int
	Major, Minor uint32   // st_dev of the mounted filesystem
	Root         string   // the directory of the filesystem mounted here ("/@docker" for a btrfs subvolume)
	MountPoint   string   // where it is mounted, relative to the process's root
	Options      string   // per-mount options
	Optional     []string // optional fields: shared:N, master:N, ...
	FSType       string
	Source       string // the mount source ("/dev/loop0"); may be empty
	SuperOptions string // per-superblock options
}

// ParseMountInfo parses the mountinfo format. Empty lines are skipped; a
// malformed line is an error naming its number.
func ParseMountInfo(r io.Reader) ([]MountInfo, error) {
	var out []MountInfo
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	sc.Split(splitNewline)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseMountInfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// splitNewline splits at '\n' only: unlike bufio.ScanLines it keeps a
// '\r' before it, which the kernel does not escape and may belong to a name.
func splitNewline(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// parseMountInfoLine parses
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Fields are separated by single spaces (an empty source shows up as two).
func parseMountInfoLine(line string) (MountInfo, error) {
	f := strings.Split(line, " ")
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 10 || sep < 0 || len(f) != sep+4 {
		return MountInfo{}, fmt.Errorf("malformed: %q", line)
	}
	var m MountInfo
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil {
		return MountInfo{}, fmt.Errorf("mount id %q: %w", f[0], err)
	}
	if m.ParentID, err = strconv.Atoi(f[1]); err != nil {
		return MountInfo{}, fmt.Errorf("parent id %q: %w", f[1], err)
	}
	if m.Major, m.Minor, err = parseMajorMinor(f[2]); err != nil {
		return MountInfo{}, err
	}
	m.Root = unescapeOctal(f[3])
	m.MountPoint = unescapeOctal(f[4])
	m.Options = unescapeOctal(f[5])
	for _, o := range f[6:sep] {
		m.Optional = append(m.Optional, unescapeOctal(o))
	}
	m.FSType = unescapeOctal(f[sep+1])
	m.Source = unescapeOctal(f[sep+2])
	m.SuperOptions = unescapeOctal(f[sep+3])
	return m, nil
}

func parseMajorMinor(s string) (major, minor uint32, err error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("major:minor %q: no colon", s)
	}
	ma, err := strconv.ParseUint(a, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("major:minor %q: %w", s, err)
	}
	mi, err := strconv.ParseUint(b, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("major:minor %q: %w", s, err)
	}
	return uint32(ma), uint32(mi), nil
}

// unescapeOctal decodes the \ooo escapes the kernel writes for space, tab,
// newline and backslash. A backslash not followed by three octal digits
// (with a value below 256) is kept as it is.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] <= '3' && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// readMountInfo parses the mountinfo file at path.
func readMountInfo(path string) ([]MountInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mounts, err := ParseMountInfo(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return mounts, nil
}

// findMount returns the visible (last) mount whose mount point is path, or
// nil.
func findMount(mounts []MountInfo, path string) *MountInfo {
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].MountPoint == path {
			return &mounts[i]
		}
	}
	return nil
}

// RootIsInitramfs reports whether / is the kernel's initial root
// filesystem (an initramfs never switched away from), where pivot_root
// fails: container runtimes must then chroot instead (runc --no-pivot,
// dockerd with DOCKER_RAMDISK=true).
func RootIsInitramfs() bool {
	mounts, err := readMountInfo("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	return rootIsInitramfs(mounts)
}

func rootIsInitramfs(mounts []MountInfo) bool {
	root := findMount(mounts, "/")
	return root != nil && root.FSType == "rootfs"
}
