package oci

import (
	"bufio"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// isCgroupFS reports whether dir is a cgroup (v1 or v2) mount.
func isCgroupFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && (st.Type == unix.CGROUP_SUPER_MAGIC || st.Type == unix.CGROUP2_SUPER_MAGIC)
}

// cgroupDirs lists where a cgroup of relative path rel may be, in every
// hierarchy mounted under /sys/fs/cgroup: runc puts relative paths under
// the agent's own cgroup, crun under the root.
func cgroupDirs(rel string) []string {
	own := map[string]bool{}
	if f, err := os.Open("/proc/self/cgroup"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if parts := strings.SplitN(sc.Text(), ":", 3); len(parts) == 3 && parts[2] != "/" {
				own[parts[2]] = true
			}
		}
		f.Close()
	}
	mounts := []string{"/sys/fs/cgroup"}
	if !isCgroup2("/sys/fs/cgroup") {
		all, _ := filepath.Glob("/sys/fs/cgroup/*")
		mounts = mounts[:0]
		for _, m := range all {
			if isCgroupFS(m) {
				mounts = append(mounts, m)
			}
		}
	}
	var dirs []string
	for _, m := range mounts {
		dirs = append(dirs, filepath.Join(m, rel))
		for p := range own {
			dirs = append(dirs, filepath.Join(m, p, rel))
		}
	}
	return dirs
}

// removeCgroups removes the (empty) cgroups of a sandbox the runtime left:
// a start that failed half way can leave them, and so can a delete whose
// last process was reaped a moment before: the kernel counts an exited
// task in its cgroup until the task has switched out for the last time,
// and rmdir answers EBUSY until then (cgroup v1 has no event that says
// when). An empty cgroup that is busy is tried again, with a short
// backoff and a bound; one that still holds processes is a leak, and is
// logged with their number.
func (b *Backend) removeCgroups(id string) {
	for _, d := range cgroupDirs(filepath.Join(b.cgroupParent, id)) {
		err := os.Remove(d)
		for wait := time.Millisecond; errors.Is(err, unix.EBUSY) && wait <= cgroupBusyBackoffMax && cgroupProcs(d) == 0; wait *= 2 {
			time.Sleep(wait)
			err = os.Remove(d)
		}
		switch {
		case err == nil:
			b.log.Debug("removed a cgroup the runtime left", "dir", d)
		case errors.Is(err, fs.ErrNotExist):
		default:
			b.log.Warn("a cgroup of the sandbox is left", "dir", d, "processes", cgroupProcs(d), "err", err)
		}
	}
}

// cgroupBusyBackoffMax bounds the waits between tries to remove an empty
// cgroup the kernel still calls busy: about a second in all.
const cgroupBusyBackoffMax = 512 * time.Millisecond

// cgroupProcs is the number of processes in the cgroup dir (0 when it
// cannot be read).
func cgroupProcs(dir string) int {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return 0
	}
	return strings.Count(string(data), "\n")
}
