package lifecycle

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/startup"
)

// unmountUnder unmounts every mount under dir, deepest first.
func unmountUnder(t testing.TB, dir string) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			points = append(points, fields[4])
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", p, err)
		}
	}
}

func fsType(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return st.Type
}

// TestPrepareSystem runs the prerequisites against a temporary root inside
// the test's private mount namespace: the machine's own mounts never change.
// The tools (modprobe, insmod, busybox ntpd) are fakes.
func TestPrepareSystem(t *testing.T) {
	testenv.RequireIsolated(t)
	root := t.TempDir()
	t.Cleanup(func() { unmountUnder(t, root) })
	at := func(p string) string { return filepath.Join(root, p) }
	for _, d := range []string{"/sys/fs/cgroup", "/sys/module", "/dev", "/proc/sys/net/ipv4", "/run"} {
		if err := os.MkdirAll(at(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(at("/proc/sys/net/ipv4/ip_forward"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// /run is there but read-only, as on an EROFS root.
	if err := unix.Mount("tmpfs", at("/run"), "tmpfs", unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	ko := at(filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]), "kernel/fs/overlayfs/overlay.ko"))
	if err := os.MkdirAll(filepath.Dir(ko), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ko, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	f := newFakes(t)
	f.set("modprobe", "fail")
	reg := prometheus.NewRegistry()
	phases := startup.NewRuntime(reg, time.Now())
	cfg := testConfig(t, shortTempDir(t))
	cfg.SystemRoot = root
	cfg.PrepareSystem = true
	cfg.NTPServer = "ntp.test.invalid"
	cfg.StartProcess = f.exec
	cfg.Phases = phases
	r := startRuntime(t, cfg)
	r.ntpTimeout = time.Minute // the fake ntpd may start slowly on a loaded machine

	notes := r.prepareSystem(context.Background())
	for _, want := range []string{
		"mounted cgroup2 on " + at("/sys/fs/cgroup"),
		"mounted devpts on " + at("/dev/pts"),
		"mounted tmpfs on " + at("/dev/shm"),
		"mounted tmpfs on " + at("/tmp"),
		"mounted tmpfs on " + at("/run"),
		"enabled ip_forward",
		"insmod overlay from " + ko,
		"ntp synced with ntp.test.invalid",
	} {
		if !slices.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, strings.Join(notes, "\n"))
		}
	}
	if !exists(at("/sys/fs/cgroup/cgroup.controllers")) || fsType(t, at("/sys/fs/cgroup")) != unix.CGROUP2_SUPER_MAGIC {
		t.Error("cgroup2 not mounted")
	}
	if !exists(at("/dev/pts/ptmx")) || fsType(t, at("/dev/pts")) != unix.DEVPTS_SUPER_MAGIC {
		t.Error("devpts not mounted")
	}
	for _, d := range []string{"/dev/shm", "/tmp", "/run"} {
		if fsType(t, at(d)) != unix.TMPFS_MAGIC || readOnly(at(d)) {
			t.Errorf("%s is not a writable tmpfs", d)
		}
	}
	if err := os.WriteFile(at("/run/probe"), nil, 0o644); err != nil {
		t.Errorf("/run still not writable: %v", err)
	}
	if b, _ := os.ReadFile(at("/proc/sys/net/ipv4/ip_forward")); string(b) != "1\n" {
		t.Errorf("ip_forward: %q", b)
	}
	var tools [][]string
	for _, c := range f.commands {
		tools = append(tools, append([]string{filepath.Base(c[0])}, c[1:]...))
	}
	want := [][]string{{"modprobe", "overlay"}, {"insmod", ko}, {"busybox", "ntpd", "-q", "-n", "-p", "ntp.test.invalid"}}
	if !slices.EqualFunc(tools, want, slices.Equal) {
		t.Errorf("tools run:\n got %q\nwant %q", tools, want)
	}

	// Again: what is in place is left alone.
	f.mu.Lock()
	f.commands = nil
	f.mu.Unlock()
	notes = r.prepareSystem(context.Background())
	for _, n := range notes {
		if strings.HasPrefix(n, "mounted") {
			t.Errorf("second run mounted again: %q", n)
		}
	}

	// Through Ensure, the prerequisites are a recorded phase.
	if res := r.Ensure(context.Background(), true); res.Status != StatusStarted || !strings.Contains(res.Message, "enabled ip_forward") {
		t.Fatalf("Ensure with PrepareSystem: %+v", res)
	}
	if _, ok := phases.End("prerequisites"); !ok {
		t.Error("phase prerequisites not recorded")
	}
}

// TestPrepareSystemNoNTPByDefault: no server, no ntpd; modprobe working
// means no insmod.
func TestPrepareSystemNoNTPByDefault(t *testing.T) {
	testenv.RequireIsolated(t)
	root := t.TempDir()
	t.Cleanup(func() { unmountUnder(t, root) })
	f := newFakes(t)
	cfg := testConfig(t, shortTempDir(t))
	cfg.SystemRoot = root
	cfg.StartProcess = f.exec
	r := startRuntime(t, cfg)
	notes := r.prepareSystem(context.Background())
	if !slices.Contains(notes, "loaded overlay module") {
		t.Errorf("notes lack the overlay: %q", notes)
	}
	if len(f.commands) != 1 || filepath.Base(f.commands[0][0]) != "modprobe" {
		t.Errorf("tools run: %q, want modprobe alone", f.commands)
	}
	if !slices.Contains(notes, "ip_forward failed(open "+filepath.Join(root, "proc/sys/net/ipv4/ip_forward")+": no such file or directory)") {
		t.Errorf("a failure is a note: %q", notes)
	}
}
