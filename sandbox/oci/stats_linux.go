package oci

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// Stats reads a sandbox's resource use from its cgroup. On cgroup v2 (the
// agent's VM) that is one directory; on v1 each controller's hierarchy
// has one, and the pressure is reported only where the kernel keeps it
// (a hybrid layout's v2 hierarchy), else left out.
func (b *Backend) Stats(_ context.Context, id string) (sandbox.Stats, error) {
	var dirs []string
	for _, d := range cgroupDirs(filepath.Join(b.cgroupParent, id)) {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		return sandbox.Stats{}, fmt.Errorf("no cgroup of sandbox %q under /sys/fs/cgroup: %w", id, fs.ErrNotExist)
	}
	v2 := isCgroup2("/sys/fs/cgroup")
	read := func(controller, file string) ([]byte, error) {
		for _, d := range dirs {
			if !v2 && controller != "" && !inHierarchy(d, controller) {
				continue
			}
			data, err := os.ReadFile(filepath.Join(d, file))
			if !errors.Is(err, fs.ErrNotExist) {
				return data, err
			}
		}
		return nil, fmt.Errorf("%s: not in the cgroup of sandbox %q: %w", file, id, fs.ErrNotExist)
	}
	return cgroupStats(read, v2)
}

// inHierarchy reports whether a cgroup directory is in the v1 hierarchy
// of controller, mounted at /sys/fs/cgroup/<controllers>.
func inHierarchy(dir, controller string) bool {
	rest, ok := strings.CutPrefix(dir, "/sys/fs/cgroup/")
	name, _, _ := strings.Cut(rest, "/")
	return ok && slices.Contains(strings.Split(name, ","), controller)
}
