package oci

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"

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
// a start that failed half way can leave them. A cgroup with processes
// cannot be removed and stays.
func (b *Backend) removeCgroups(id string) {
	for _, d := range cgroupDirs(filepath.Join(b.cgroupParent, id)) {
		if err := os.Remove(d); err == nil {
			b.log.Debug("removed a cgroup the runtime left", "dir", d)
		}
	}
}
