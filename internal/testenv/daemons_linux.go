package testenv

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// HideDaemonState mounts empty tmpfs over the few places containerd and
// dockerd write whatever their flags say (/run/containerd/s for shim
// sockets, /run/docker/plugins, /etc/docker/key.json, /opt/containerd),
// in the test's private mount namespace (RunIsolated), so the machine
// keeps none of it. A directory the test had to create is removed
// afterwards.
func HideDaemonState(t testing.TB) {
	t.Helper()
	RequireIsolated(t)
	for _, d := range []string{"/run", "/opt", "/etc/docker"} {
		created := false
		if _, err := os.Stat(d); os.IsNotExist(err) {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			created = true
		}
		if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			t.Fatalf("mount tmpfs on %s: %v", d, err)
		}
		t.Cleanup(func() {
			if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", d, err)
			}
			if created {
				os.Remove(d)
			}
		})
	}
}

// RemoveNewDockerCgroups removes, after the test, the empty "docker"
// cgroups that dockerd creates in cgroup v1 hierarchies (which no
// namespace hides) when they were not there before.
func RemoveNewDockerCgroups(t testing.TB) {
	t.Helper()
	before, _ := filepath.Glob("/sys/fs/cgroup/*/docker")
	t.Cleanup(func() {
		after, _ := filepath.Glob("/sys/fs/cgroup/*/docker")
		for _, d := range after {
			if !slices.Contains(before, d) {
				os.Remove(d) // rmdir of a cgroup: only when empty
			}
		}
	})
}
