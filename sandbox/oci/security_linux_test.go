package oci

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// TestOCIConfinement: what a default sandbox's root is, seen from inside
// and from the host, with each runtime.
func TestOCIConfinement(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			e := newOCIEnv(t, rt)
			data := e.sharedDir("data")
			hostFile := filepath.Join(data, "host-owned")
			if err := os.WriteFile(hostFile, []byte("guest root's\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			info := e.create(sandbox.Spec{ID: "conf-" + rt, Mounts: []sandbox.Mount{{Source: data, Target: "/data"}}})
			sec := info.Security
			if !sec.UserNamespace || sec.IDMap.HostID < idPoolStart || sec.IDMap.Size != sandbox.IDRangeSize ||
				!sec.NoNewPrivileges || !sec.Seccomp || len(sec.Capabilities) != len(sandbox.DefaultCapabilities()) {
				t.Fatalf("security reported: %+v", sec)
			}
			want := fmt.Sprintf("0 %d %d", sec.IDMap.HostID, sec.IDMap.Size)
			if got := strings.Join(strings.Fields(e.sh(info.ID, "cat /proc/self/uid_map")), " "); got != want {
				t.Errorf("uid_map %q, want %q", got, want)
			}
			if got := strings.Join(strings.Fields(e.sh(info.ID, "cat /proc/self/gid_map")), " "); got != want {
				t.Errorf("gid_map %q, want %q", got, want)
			}
			status := e.sh(info.ID, "cat /proc/self/status")
			for _, line := range []string{"NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t" + capMask(t, sandbox.DefaultCapabilities())} {
				if !strings.Contains(status, line+"\n") {
					t.Errorf("/proc/self/status lacks %q:\n%s", line, status)
				}
			}
			// Its files are its range's on the host; the guest's are
			// nobody's inside.
			if out := e.sh(info.ID, "touch /mine && stat -c %u:%g /mine /data/host-owned"); out != "0:0\n65534:65534\n" {
				t.Errorf("owners inside: %q", out)
			}
			if out := e.sh(info.ID, "cat /data/host-owned"); out != "guest root's\n" {
				t.Errorf("read the guest's file: %q", out)
			}
			// Each is refused by the kernel, not for want of a file.
			for _, script := range []string{
				"echo x >> /data/host-owned",
				"touch /data/new",
				"mkdir -p /m && mount -t tmpfs x /m",
				"head -c 4096 /dev/zero > /tmp/zero.ko && insmod /tmp/zero.ko",
				"chroot / unshare -U true || unshare -n true",
			} {
				stdout, stderr, code := e.run(info.ID, sandbox.Process{Cmd: []string{"sh", "-c", script}})
				if code == 0 || !strings.Contains(stderr, "not permitted") && !strings.Contains(stderr, "denied") {
					t.Errorf("%q: exit %d %q %q", script, code, stdout, stderr)
				}
			}
			if data, _ := os.ReadFile(hostFile); string(data) != "guest root's\n" {
				t.Errorf("the guest's file changed: %q", data)
			}
			// Only its own processes: its init is its pid 1.
			if out := e.sh(info.ID, "ls /proc | grep -c '^[0-9]'"); out == "" || mustAtoi(t, out) > 4 {
				t.Errorf("sees %s processes", out)
			}
			if got := readCgroupFile(t, e, info.ID, "pids.max"); got != strconv.FormatInt(sandbox.DefaultLimits.Pids, 10) {
				t.Errorf("pids.max = %q", got)
			}
		})
	}
}

// TestOCIPidsLimit: a fork bomb stops at the limit, and the sandbox still
// stops cleanly.
func TestOCIPidsLimit(t *testing.T) {
	e := newOCIEnv(t, "runc")
	id := e.create(sandbox.Spec{ID: "bomb", Limits: sandbox.Limits{Pids: 32}}).ID
	// Each sleep is a process, kept after the shell has exited.
	e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "for i in $(seq 1 200); do sleep 600 >/dev/null 2>&1 & done"}})
	if n := mustAtoi(t, readCgroupFile(t, e, id, "pids.current")); n > 32 || n < 16 {
		t.Errorf("%d processes under a pids limit of 32", n)
	}
	if events := readCgroupFile(t, e, id, "pids.events"); events == "max 0" {
		t.Errorf("no fork was refused: %q", events)
	}
	if _, err := e.m.Stop(context.Background(), id, 0); err != nil {
		t.Fatal(err)
	}
}

// TestOCIHostUsersAndReadOnly: the looser setting is reported, the
// stricter one holds.
func TestOCIHostUsersAndReadOnly(t *testing.T) {
	e := newOCIEnv(t, "runc")
	host := e.create(sandbox.Spec{ID: "host", Security: sandbox.Security{HostUsers: true}})
	if host.Security.UserNamespace || host.Security.IDMap != (sandbox.IDMap{}) {
		t.Errorf("host users reported as %+v", host.Security)
	}
	if got := strings.Fields(e.sh(host.ID, "cat /proc/self/uid_map")); len(got) != 3 || got[1] != "0" {
		t.Errorf("uid_map of a host-users sandbox: %q", got)
	}
	ro := e.create(sandbox.Spec{ID: "ro", Security: sandbox.Security{ReadOnlyRootfs: true}})
	if !ro.Security.ReadOnlyRootfs {
		t.Errorf("read-only rootfs not reported: %+v", ro.Security)
	}
	if _, _, code := e.run(ro.ID, sandbox.Process{Cmd: []string{"touch", "/x"}}); code == 0 {
		t.Error("wrote to a read-only root")
	}
	if out := e.sh(ro.ID, "touch /tmp/x && echo ok"); out != "ok\n" {
		t.Errorf("/tmp of a read-only root: %q", out)
	}
	a, err := e.m.Get("host")
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.m.Get("ro")
	if err != nil {
		t.Fatal(err)
	}
	if a.Security.UserNamespace || !b.Security.UserNamespace {
		t.Errorf("Get: %+v %+v", a.Security, b.Security)
	}
}

// TestOCIRestoreIntoAnotherRange: a snapshot's files, made in one
// sandbox's id range, belong to the same users in the sandbox restored
// from it, whose range is another.
func TestOCIRestoreIntoAnotherRange(t *testing.T) {
	e := newOCIEnv(t, "runc")
	ctx := context.Background()
	orig := e.create(sandbox.Spec{ID: "orig"})
	e.sh("orig", "touch /root-file && mkdir -p /home && touch /home/user-file && chown 1000:1001 /home/user-file && ln /root-file /root-link")
	snap, err := e.m.Checkpoint(ctx, "orig", sandbox.CheckpointRequest{Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	copied, err := e.m.Restore(ctx, snap.ID, sandbox.RestoreRequest{ID: "copy"})
	e.track("copy")
	if err != nil {
		t.Fatal(err)
	}
	if copied.Security.IDMap.HostID == orig.Security.IDMap.HostID {
		t.Fatalf("the restored sandbox shares its original's range %d", orig.Security.IDMap.HostID)
	}
	if out := e.sh("copy", "stat -c %u:%g /root-file /root-link /home/user-file; touch /root-file && echo writable"); out != "0:0\n0:0\n1000:1001\nwritable\n" {
		t.Errorf("owners in the restored sandbox: %q", out)
	}
}

// TestOCIHostileRoot: what a workload does to its own root cannot hold
// the agent: /etc/passwd made a FIFO (whose open would wait for a writer
// forever) fails the lookup of a user by name, and the sandbox is still
// removed.
// TestOCIStopAfterACutShortCreate: a runtime directory without state (a
// create killed part way) is no container, and no obstacle.
func TestOCIStopAfterACutShortCreate(t *testing.T) {
	e := newOCIEnv(t, "runc")
	ctx := context.Background()
	id := e.create(sandbox.Spec{ID: "cut"}).ID
	if _, err := e.m.Stop(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	// What a runc create killed before it wrote its state leaves: the
	// container's directory, empty. There is no container; the removal
	// must not fail on it, and must clear it.
	leftover := filepath.Join(e.cfg.StateDir, "runtime", id)
	if err := os.Mkdir(leftover, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Remove(ctx, id, true); err != nil {
		t.Fatalf("remove with a cut-short create's leftover: %v", err)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the leftover is still there: %v", err)
	}
}

func TestOCIHostileRoot(t *testing.T) {
	e := newOCIEnv(t, "runc")
	id := e.create(sandbox.Spec{ID: "fifo"}).ID
	e.sh(id, "rm /etc/passwd && mkfifo /etc/passwd")
	var c liveOut
	_, err := e.m.Run(context.Background(), id, sandbox.Process{Cmd: []string{"true"}, User: "nobody"}, c.out)
	if !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), `"user"`) {
		t.Errorf("ran as nobody with a FIFO for /etc/passwd: %v", err)
	}
	if out := e.sh(id, "echo still here"); out != "still here\n" {
		t.Errorf("after: %q", out)
	}
	if err := e.m.Remove(context.Background(), id, true); err != nil {
		t.Fatal(err)
	}
}

// TestOCIRestoreOwnVolume: a sandbox that mounted its own volume
// directory restores into a sandbox that mounts its own, new one.
func TestOCIRestoreOwnVolume(t *testing.T) {
	e := newOCIEnv(t, "runc")
	ctx := context.Background()
	vol := filepath.Join(e.cfg.StateDir, "volumes", "vol-orig", "cache")
	e.create(sandbox.Spec{ID: "vol-orig", Mounts: []sandbox.Mount{{Source: vol, Target: "/cache"}}})
	e.sh("vol-orig", "echo kept > /cache/f && echo layer > /in-layer")
	snap, err := e.m.Checkpoint(ctx, "vol-orig", sandbox.CheckpointRequest{Name: "v"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Restore(ctx, snap.ID, sandbox.RestoreRequest{ID: "vol-copy"}); err != nil {
		t.Fatal(err)
	}
	e.track("vol-copy")
	if out := e.sh("vol-copy", "cat /in-layer; ls /cache | wc -l; touch /cache/new && echo writable"); out != "layer\n0\nwritable\n" {
		t.Errorf("restored: %q", out)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.StateDir, "volumes", "vol-copy", "cache", "new")); err != nil {
		t.Errorf("the restored sandbox's volume: %v", err)
	}
}

// TestMountPolicy: what may be mounted, checked as asked and as opened.
func TestMountPolicy(t *testing.T) {
	state, shared := t.TempDir(), t.TempDir()
	agentSock := filepath.Join(t.TempDir(), "agent.sock")
	p := newMountPolicy(Config{StateDir: state, MountRoots: []string{shared}, ForbiddenPaths: []string{agentSock}})
	for _, d := range []string{"ok/sub", "inner"} {
		if err := os.MkdirAll(filepath.Join(shared, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc", filepath.Join(shared, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../..", filepath.Join(shared, "ok", "up")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("ok/sub", filepath.Join(shared, "inside")); err != nil {
		t.Fatal(err)
	}
	refused := map[string]string{
		"/":                               "holds",
		"/etc":                            "not under a mount root",
		state:                             "the agent's state",
		filepath.Join(state, "sandboxes"): "the agent's state",
		agentSock:                         "the agent's own files",
		"/run/containerd/containerd.sock": "runtimes' sockets",
		"/proc/1/root":                    "kernel file systems",
	}
	for src, why := range refused {
		err := p.check(0, "box", sandbox.Mount{Source: src, Target: "/x"})
		if !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), `"mounts[0].source"`) || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v, want a refusal saying %q", src, err, why)
		}
	}
	for _, src := range []string{filepath.Join(shared, "escape"), filepath.Join(shared, "ok", "up")} {
		if err := p.validate(0, "box", sandbox.Mount{Source: src, Target: "/x"}); !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), "through a symlink") {
			t.Errorf("validate %s: %v", src, err)
		}
		if f, err := p.open(0, "box", sandbox.Mount{Source: src, Target: "/x"}, 0, 0); err == nil || !strings.Contains(err.Error(), "through a symlink") {
			if f != nil {
				f.Close()
			}
			t.Errorf("%s: opened (%v)", src, err)
		}
	}
	f, err := p.open(0, "box", sandbox.Mount{Source: filepath.Join(shared, "inside"), Target: "/x"}, 0, 0)
	if err != nil {
		t.Fatalf("a symlink within the root: %v", err)
	}
	real, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	f.Close()
	if real != filepath.Join(shared, "ok", "sub") {
		t.Errorf("opened %s", real)
	}
	// The sandbox's own volume directory, inside the state dir, is made
	// for it, owned by its root.
	own := filepath.Join(state, "volumes", "box", "cache")
	f, err = p.open(0, "box", sandbox.Mount{Source: own, Target: "/cache"}, 1<<30, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	var st unix.Stat_t
	if err := unix.Stat(own, &st); err != nil || st.Uid != 1<<30 || st.Gid != 1<<30 {
		t.Errorf("the volume directory: owner %d:%d, %v", st.Uid, st.Gid, err)
	}
	if err := p.check(0, "other", sandbox.Mount{Source: own, Target: "/cache"}); !errors.Is(err, sandbox.ErrInvalid) {
		t.Errorf("another sandbox's volume directory: %v", err)
	}
	// A root reached through a symlink is taken by its real path: a
	// symlink swapped in for it later leads nowhere.
	outer := t.TempDir()
	if err := os.MkdirAll(filepath.Join(outer, "real", "projects"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outer, "real"), filepath.Join(outer, "link")); err != nil {
		t.Fatal(err)
	}
	p2 := newMountPolicy(Config{StateDir: state, MountRoots: []string{filepath.Join(outer, "link", "projects")}})
	if err := p2.validate(0, "box", sandbox.Mount{Source: filepath.Join(outer, "link", "projects"), Target: "/x"}); err != nil {
		t.Errorf("a root given through a symlink: %v", err)
	}
	if err := os.Rename(filepath.Join(outer, "real", "projects"), filepath.Join(outer, "real", "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(outer, "real", "projects")); err != nil {
		t.Fatal(err)
	}
	if err := p2.validate(0, "box", sandbox.Mount{Source: filepath.Join(outer, "link", "projects", "etc"), Target: "/x"}); !errors.Is(err, sandbox.ErrInvalid) {
		t.Errorf("a root swapped for a symlink to /: %v", err)
	}
	if _, err := checkRootfs(filepath.Join(state, "rootfs"), "/"); err == nil {
		t.Error("rootfs / accepted")
	}
	if _, err := checkRootfs(filepath.Join(state, "rootfs"), state); err == nil {
		t.Error("rootfs of the state dir accepted")
	}
}

// capMask is the hexadecimal mask /proc/<pid>/status shows for caps.
func capMask(t *testing.T, caps []string) string {
	t.Helper()
	numbers := map[string]uint{ // linux/capability.h
		"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
		"CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10, "CAP_SYS_CHROOT": 18,
	}
	var mask uint64
	for _, name := range caps {
		n, ok := numbers[name]
		if !ok {
			t.Fatalf("capability %s: add its number to the table", name)
		}
		mask |= 1 << n
	}
	return fmt.Sprintf("%016x", mask)
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

// readCgroupFile reads a file of sandbox id's cgroup (v2) on the host.
func readCgroupFile(t *testing.T, e *ociEnv, id, name string) string {
	t.Helper()
	for _, d := range cgroupDirs(filepath.Join(e.cfg.CgroupParent, id)) {
		if data, err := os.ReadFile(filepath.Join(d, name)); err == nil {
			return strings.TrimSpace(string(data))
		}
	}
	t.Fatalf("no %s for sandbox %s", name, id)
	return ""
}
