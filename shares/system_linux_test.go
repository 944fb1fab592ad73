package shares

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

func TestMSFlags(t *testing.T) {
	if got, want := msFlags(DefaultFlags), uintptr(unix.MS_NOSUID|unix.MS_NODEV); got != want {
		t.Errorf("msFlags(DefaultFlags) = %#x, want %#x", got, want)
	}
	if got, want := msFlags(ReadOnly|NoExec|StrictAtime|LazyTime), uintptr(unix.MS_RDONLY|unix.MS_NOEXEC|unix.MS_STRICTATIME|unix.MS_LAZYTIME); got != want {
		t.Errorf("msFlags(ro,noexec,strictatime,lazytime) = %#x, want %#x", got, want)
	}
	// Every flag has its own MS_ flag.
	seen := map[uintptr]bool{}
	for _, fn := range flagNames {
		ms := msFlags(fn.flag)
		if ms == 0 || seen[ms] {
			t.Errorf("flag %s translates to %#x", fn.name, ms)
		}
		seen[ms] = true
	}
}

func TestNewMounterReadsTheMountTable(t *testing.T) {
	mounts, err := NewMounter(nil).Ops.MountInfo()
	if err != nil {
		t.Fatal(err)
	}
	if visibleMount(mounts, "/") == nil {
		t.Errorf("no / in %+v", mounts)
	}
	if _, err := NewMounter(nil).Ops.Tags(); err != nil {
		t.Errorf("the machine's tags: %v", err)
	}
}

// mountTmpfs mounts a tmpfs on dir and returns its mountinfo line.
func mountTmpfs(t *testing.T, dir string) disk.MountInfo {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	mounts, err := readMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mi := visibleMount(mounts, dir)
	if mi == nil || mi.FSType != "tmpfs" {
		t.Fatalf("the tmpfs on %s is not the visible mount there: %+v", dir, mi)
	}
	return *mi
}

// The real Unmount, on a real mount: it unmounts the share's own mount,
// removes the mount points made for it, and refuses when another mount
// covers it.
func TestSystemUnmount(t *testing.T) {
	testenv.RequireIsolated(t)
	base := t.TempDir()
	m := NewMounter(nil)
	made, err := m.makeDirs(filepath.Join(base, "host", "share"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(base, "host"), filepath.Join(base, "host", "share")}; !slices.Equal(made, want) {
		t.Fatalf("made %q, want %q", made, want)
	}
	dir := made[1]
	mi := mountTmpfs(t, dir)
	sh := Share{Tag: "t", Path: dir, MountedByAgent: true, mountID: mi.ID, madeDirs: made}

	over := mountTmpfs(t, dir)
	err = m.Unmount([]Share{sh})
	if err == nil || !strings.Contains(err.Error(), "unmount share t at "+dir+": another mount covers it") {
		t.Errorf("Unmount of a covered share: %v", err)
	}
	mounts, _ := readMountInfo("/proc/self/mountinfo")
	if top := visibleMount(mounts, dir); top == nil || top.ID != over.ID {
		t.Fatalf("the covering mount is gone: %+v", top)
	}
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}

	if err := m.Unmount([]Share{sh}); err != nil {
		t.Fatal(err)
	}
	mounts, _ = readMountInfo("/proc/self/mountinfo")
	if slices.ContainsFunc(mounts, func(x disk.MountInfo) bool { return x.ID == mi.ID }) {
		t.Error("the share's mount is still there")
	}
	if _, err := os.Stat(made[0]); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("mount point %s left: %v", made[0], err)
	}
}

// The real mount(2) of a tag the VM does not have (or of virtiofs on a
// kernel without it) leaves no mount point behind. Where the kernel could
// load virtiofs, mount(2) would ask modprobe for it on this machine: the
// machine then says it has no virtio-fs device, and the real Mounter must
// leave nothing either, without a mount.
func TestSystemMountAllLeavesNothingForATagItCannotMount(t *testing.T) {
	testenv.RequireIsolated(t)
	var log bytes.Buffer
	m := NewMounter(slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	// A virtio-fs device, no listing: only the mount can tell.
	devices := 1
	if !virtiofsMountable() {
		devices = 0
		m.Ops.Mount = func(tag, path string, _ Flags, _ string) error {
			t.Errorf("mounted %s on %s with no virtio-fs device", tag, path)
			return nil
		}
	}
	m.Ops.Tags = func() (TagInfo, error) { return TagInfo{Devices: devices}, nil }
	base := t.TempDir()
	path := filepath.Join(base, "Users", "share")
	tag := "arcbox-test-no-such-tag"
	if got := m.MountAll([]Spec{{Tag: tag, Path: path, Options: []string{"dax=always"}}}); len(got) != 0 {
		t.Fatalf("mounted %+v", got)
	}
	if _, err := os.Stat(filepath.Join(base, "Users")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("mount point left: %v", err)
	}
	t.Logf("log:\n%s", &log)
	if !strings.Contains(log.String(), "tag="+tag) {
		t.Errorf("the log does not name the tag:\n%s", &log)
	}
}

// virtiofsMountable reports whether a virtiofs mount can be tried without
// loading a module on the machine: the kernel has virtiofs, or cannot load
// modules at all.
func virtiofsMountable() bool {
	data, _ := os.ReadFile("/proc/filesystems")
	if slices.ContainsFunc(strings.Split(string(data), "\n"), func(l string) bool { return strings.HasSuffix(l, "\tvirtiofs") }) {
		return true
	}
	_, err := os.Stat("/proc/sys/kernel/modprobe")
	return errors.Is(err, fs.ErrNotExist)
}
