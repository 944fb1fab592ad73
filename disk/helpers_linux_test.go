package disk

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"golang.org/x/sys/unix"
)

// requireMountTests gates a test that formats and mounts: root, inside
// testenv.RunIsolated's private mount namespace, with mkfs.btrfs.
func requireMountTests(t testing.TB) {
	t.Helper()
	testenv.RequireIsolated(t)
	testenv.RequireBinary(t, "mkfs.btrfs")
}

// newImage creates a sparse image file of size bytes in a new temporary
// directory.
func newImage(t testing.TB, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.Truncate(mustCreate(t, img), size); err != nil {
		t.Fatal(err)
	}
	return img
}

// newLoop attaches img to an autoclear loop device and keeps it open until
// the test ends: the device goes away when it is closed and unmounted, even
// if the test binary dies. Cleanup waits until no loop device backs img.
func newLoop(t testing.TB, img string) string {
	t.Helper()
	f, err := attachLoop("/dev", img)
	if err != nil {
		t.Fatalf("attach loop device: %v", err)
	}
	t.Cleanup(func() {
		f.Close()
		waitNoLoop(t, img)
	})
	return f.Name()
}

// loopsBacking lists the loop devices whose backing file is img.
func loopsBacking(t testing.TB, img string) []string {
	t.Helper()
	loops, err := boundLoops("/sys")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for name, file := range loops {
		if file == img {
			out = append(out, "/dev/"+name)
		}
	}
	return out
}

// waitNoLoop waits, with a deadline, until no loop device backs img; the
// kernel clears autoclear devices on their last close.
func waitNoLoop(t testing.TB, img string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		loops := loopsBacking(t, img)
		if len(loops) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("loop devices %v still back %s", loops, img)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testConfig returns a Config for device with every path in a new
// temporary directory, and unmounts them all when the test ends.
func testConfig(t testing.TB, device string) Config {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{
		Device:     device,
		MountPoint: filepath.Join(dir, "data"),
		StateDir:   filepath.Join(dir, "state"),
		Subvolumes: []Subvolume{
			{Name: "@docker", Target: filepath.Join(dir, "docker")},
			{Name: "@containerd", Target: filepath.Join(dir, "containerd")},
		},
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	t.Cleanup(func() { unmountAll(t, cfg) })
	return cfg
}

func newVolume(t testing.TB, cfg Config) *Volume {
	t.Helper()
	v, err := NewVolume(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// unmountAll unmounts the targets and the mount point of cfg, as a reboot
// would.
func unmountAll(t testing.TB, cfg Config) {
	t.Helper()
	paths := []string{}
	for _, sv := range cfg.Subvolumes {
		paths = append(paths, sv.Target)
	}
	for _, p := range append(paths, cfg.MountPoint) {
		unmount(t, p)
	}
}

// unmount removes every mount stacked on path.
func unmount(t testing.TB, path string) {
	t.Helper()
	for range 8 {
		err := unix.Unmount(path, 0)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return
		}
		if err != nil {
			t.Errorf("unmount %s: %v", path, err)
			return
		}
	}
}

// mountsAt returns the mountinfo entries of the paths, by path.
func mountsAt(t testing.TB, paths ...string) map[string]MountInfo {
	t.Helper()
	all, err := readMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]MountInfo{}
	for _, m := range all {
		for _, p := range paths {
			if m.MountPoint == p {
				if _, dup := out[p]; dup {
					t.Errorf("%s is mounted more than once", p)
				}
				out[p] = m
			}
		}
	}
	return out
}

// volumePaths returns the mount point and targets of cfg.
func volumePaths(cfg Config) []string {
	paths := []string{cfg.MountPoint}
	for _, sv := range cfg.Subvolumes {
		paths = append(paths, sv.Target)
	}
	return paths
}

// checkMountedVolume fails unless cfg's volume is mounted as Ensure mounts
// it, from source.
func checkMountedVolume(t testing.TB, cfg Config, source string) {
	t.Helper()
	got := mountsAt(t, volumePaths(cfg)...)
	check := func(path, root string) {
		m, ok := got[path]
		switch {
		case !ok:
			t.Errorf("%s: not mounted", path)
		case m.FSType != "btrfs" || m.Root != root || m.Source != source || !strings.Contains(m.SuperOptions, "compress=zstd:3"):
			t.Errorf("%s: got %s %s root %s (%s), want btrfs %s root %s with compress=zstd:3",
				path, m.FSType, m.Source, m.Root, m.SuperOptions, source, root)
		}
	}
	check(cfg.MountPoint, "/")
	for _, sv := range cfg.Subvolumes {
		check(sv.Target, "/"+sv.Name)
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	bin := testenv.RequireBinary(t, name)
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkFile(t testing.TB, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("read: %v", err)
		return
	}
	if string(got) != want {
		t.Errorf("%s: got %q, want %q", path, got, want)
	}
}

// mountFS mounts a fresh filesystem of type fstype (from the device dev, or
// "" for tmpfs) on a new temporary directory and unmounts it at the end.
func mountFS(t testing.TB, fstype, dev string) string {
	t.Helper()
	dir := t.TempDir()
	source := dev
	if source == "" {
		source = fstype
	}
	if err := unix.Mount(source, dir, fstype, 0, ""); err != nil {
		t.Fatalf("mount %s %s on %s: %v", fstype, source, dir, err)
	}
	t.Cleanup(func() { unmount(t, dir) })
	return dir
}

// fakeMkfs writes an executable script standing in for mkfs.btrfs; body
// sees the device as $dev.
func fakeMkfs(t testing.TB, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mkfs.btrfs")
	script := "#!/bin/sh\nfor dev; do :; done\n" + body + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func execOutput(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(testenv.RequireBinary(t, name), args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}

// mountTmpfsAt mounts a tmpfs on the existing directory dir until the test
// ends.
func mountTmpfsAt(t testing.TB, dir string) {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount(t, dir) })
}
