package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// The escape suite: what a workload nobody reviewed can reach from inside
// a sandbox, and what a create request can make the agent expose. Every
// check is made with the real agent, runtime and kernel.

// refused posts a create that must be refused with a 400 naming field,
// and checks that nothing of it is left: no sandbox, no bundle, no mount.
func (a *agentProc) refused(t testing.TB, req api.CreateSandboxRequest, field string) {
	t.Helper()
	id := *req.Id
	r, err := a.Client(t).CreateSandboxWithResponse(reqCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON400 == nil || !strings.Contains(r.JSON400.Message, field) {
		t.Errorf("create %s: %d %s; want 400 naming %s", id, r.StatusCode(), r.Body, field)
		if r.JSON202 != nil {
			a.remove(t, id, true)
		}
		return
	}
	t.Logf("refused: %s", r.JSON400.Message)
	if g, err := a.Client(t).GetSandboxWithResponse(reqCtx(t), id); err != nil {
		t.Fatal(err)
	} else if g.JSON404 == nil {
		t.Errorf("after the refusal GET %s answered %d %s, want 404", id, g.StatusCode(), g.Body)
		a.remove(t, id, true)
	}
	a.assertGone(t, id)
}

// security is a sandbox's security as GET answers it.
func (a *agentProc) security(t testing.TB, id string) api.SandboxSecurity {
	t.Helper()
	info := a.get(t, id)
	if info.Security == nil {
		t.Fatalf("GET %s answers no security", id)
	}
	return *info.Security
}

// listSecurity lists the sandboxes' security, by id.
func (a *agentProc) listSecurity(t testing.TB) map[string]*api.SandboxSecurity {
	t.Helper()
	r, err := a.Client(t).ListSandboxesWithResponse(reqCtx(t), &api.ListSandboxesParams{})
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON200 == nil {
		t.Fatalf("GET /v1/sandboxes: %d %s", r.StatusCode(), r.Body)
	}
	m := map[string]*api.SandboxSecurity{}
	for _, s := range r.JSON200.Sandboxes {
		m[s.Id] = s.Security
	}
	return m
}

// fails runs a shell script that must fail, and returns its stderr.
func (a *agentProc) fails(t testing.TB, id, what, script string) string {
	t.Helper()
	res := a.run(t, id, api.RunRequest{Cmd: []string{"sh", "-c", script}})
	if res.Code == 0 {
		t.Errorf("%s: %q succeeded (stdout %q), want a failure", what, script, res.Stdout)
	}
	return string(res.Stderr)
}

// writeFile writes a file, failing the test if it cannot.
func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// randomHex is n random bytes in hex.
func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestEscapeMountRefusals: bind mounts of /, /etc, a path outside the
// mount roots, the agent's socket, the runtime's sockets, the state dir
// (itself, inside it, or a directory holding it), the data volume, and
// symlinks or ".." leading to them are 400 naming the mount's source; a
// rootfs outside the agent's own store is a 400 naming rootfs. The agent
// here has its own directory as a mount root, so that the sockets and the
// state dir lie under a root: they must be refused for what they are.
// Nothing of a refused create is left; a mount and a rootfs the policy
// allows are taken (so the refusals are not blanket ones).
func TestEscapeMountRefusals(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	dir := filepath.Join(suite.dir, "escape-mounts")
	dockerSock, containerdSock := filepath.Join(dir, "docker.sock"), filepath.Join(dir, "containerd.sock")
	for _, s := range []string{dockerSock, containerdSock} {
		boundSocket(t, s)
	}
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: dir}, extra: []string{"--sandbox-mount-root", dir}})

	mnt := filepath.Join(dir, "mnt")
	writeFile(t, filepath.Join(mnt, "ok", "marker"), "allowed\n", 0o644)
	for _, d := range []string{filepath.Join(dir, "data"), filepath.Join(mnt, "rootfs", "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	outside := filepath.Join(suite.dir, "escape-outside")
	writeFile(t, filepath.Join(outside, "secret"), "outside the roots\n", 0o644)
	t.Cleanup(func() { os.RemoveAll(outside) })
	for link, to := range map[string]string{"link-etc": "/etc", "link-state": "../state", "link-outside": outside} {
		if err := os.Symlink(to, filepath.Join(mnt, link)); err != nil {
			t.Fatal(err)
		}
	}

	mount := func(sources ...string) api.CreateSandboxRequest {
		var ms []api.Mount
		for i, s := range sources {
			ms = append(ms, api.Mount{Source: s, Target: fmt.Sprintf("/m%d", i)})
		}
		return api.CreateSandboxRequest{Mounts: &ms}
	}
	rootfs := func(dir string) api.CreateSandboxRequest { return api.CreateSandboxRequest{Rootfs: &dir} }
	for _, tc := range []struct {
		name  string
		req   api.CreateSandboxRequest
		field string
	}{
		{"root", mount("/"), "mounts[0].source"},
		{"etc", mount("/etc"), "mounts[0].source"},
		{"outside-roots", mount(outside), "mounts[0].source"},
		{"agent-socket", mount(a.Socket()), "mounts[0].source"},
		{"docker-socket", mount(dockerSock), "mounts[0].source"},
		{"containerd-socket", mount(containerdSock), "mounts[0].source"},
		{"state-dir", mount(a.stateDir), "mounts[0].source"},
		{"in-state-dir", mount(filepath.Join(a.stateDir, "rootfs")), "mounts[0].source"},
		{"holds-state-dir", mount(dir), "mounts[0].source"},
		{"data-volume", mount(filepath.Join(dir, "data")), "mounts[0].source"},
		{"symlink-to-etc", mount(filepath.Join(mnt, "link-etc")), "mounts[0].source"},
		{"symlink-to-state-dir", mount(filepath.Join(mnt, "link-state")), "mounts[0].source"},
		{"symlink-out-of-root", mount(filepath.Join(mnt, "link-outside")), "mounts[0].source"},
		{"through-symlink", mount(filepath.Join(mnt, "link-etc", "ssl")), "mounts[0].source"},
		{"dotdot-to-etc", mount(dir + "/../../../../../../../etc"), "mounts[0].source"},
		{"dotdot-to-state-dir", mount(mnt + "/../state"), "mounts[0].source"},
		{"second-mount", mount(filepath.Join(mnt, "ok"), "/etc"), "mounts[1].source"},
		{"rootfs-root", rootfs("/"), "rootfs"},
		{"rootfs-state-dir", rootfs(a.stateDir), "rootfs"},
		{"rootfs-under-mount-root", rootfs(filepath.Join(mnt, "rootfs")), "rootfs"},
		{"rootfs-dotdot", rootfs(filepath.Join(a.stateDir, "rootfs") + "/../.."), "rootfs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Id = agenttest.Ptr("refused-" + tc.name)
			a.refused(t, tc.req, tc.field)
		})
	}

	t.Run("allowed", func(t *testing.T) {
		id := a.create(t, api.CreateSandboxRequest{
			Id:     agenttest.Ptr("allowed"),
			Rootfs: agenttest.Ptr(filepath.Join(a.stateDir, "rootfs", "default")),
			Mounts: &[]api.Mount{{Source: filepath.Join(mnt, "ok"), Target: "/data", Readonly: agenttest.Ptr(true)}},
		})
		if out := a.sh(t, id, "cat /data/marker"); out != "allowed\n" {
			t.Errorf("the allowed mount reads %q", out)
		}
		a.remove(t, id, false)
	})
}

// boundSocket leaves a unix socket file at path, bound by nobody that
// listens: what a runtime's socket looks like to a path check.
func boundSocket(t testing.TB, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatalf("bind %s: %v", path, err)
	}
}

// TestEscapeGuestFile: root in a default sandbox reads a guest root-owned
// file in a mounted (read-write) directory but cannot write, truncate,
// chmod, chown or remove it, nor make a file beside it.
func TestEscapeGuestFile(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	src := mountDir(t)
	const owned = "owned by the guest's root\n"
	writeFile(t, filepath.Join(src, "owned"), owned, 0o644)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("escape-guest-file"), Mounts: &[]api.Mount{{Source: src, Target: "/data"}}})
	if out := a.sh(t, id, "cat /data/owned"); out != owned {
		t.Errorf("reading the mounted guest file: %q", out)
	}
	a.fails(t, id, "append to a guest root-owned file", "echo x >> /data/owned")
	a.fails(t, id, "truncate it", ": > /data/owned")
	a.fails(t, id, "chmod it", "chmod 666 /data/owned")
	a.fails(t, id, "chown it", "chown 0:0 /data/owned")
	a.fails(t, id, "remove it", "rm -f /data/owned && test ! -e /data/owned")
	a.fails(t, id, "create a file in a guest root-owned directory", "echo x > /data/new")
	if data, err := os.ReadFile(filepath.Join(src, "owned")); err != nil || string(data) != owned {
		t.Errorf("the guest file after the attempts: %q, %v", data, err)
	}
	if st, err := os.Stat(filepath.Join(src, "owned")); err != nil || st.Mode().Perm() != 0o644 || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("the guest file's mode and owner after the attempts: %v, %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(src, "new")); err == nil {
		t.Error("a file made in the sandbox appeared in the guest directory")
	}
	a.remove(t, id, false)
}

// TestEscapeInside: from inside a default sandbox, root is an unprivileged
// range of the guest's users (its uid_map, as GET reports it); it cannot
// read a guest file it was not given (directly, or through /proc/<pid>/root
// of its init or of the agent), nor see the guest's processes;
// /proc/self/status shows NoNewPrivs 1, seccomp in filter mode and exactly
// the capabilities GET reports; it cannot mount (nor make a user namespace
// to mount in), load a module, or write /proc/sys; the default pids limit
// is 1024.
func TestEscapeInside(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	secret := filepath.Join(suite.dir, "escape-secret-"+randomHex(t, 4))
	writeFile(t, secret, "not given\n", 0o644)
	t.Cleanup(func() { os.Remove(secret) })
	// A process of the guest's, to look for from inside.
	const hostMark = "7654321"
	host := exec.Command("busybox", "sleep", hostMark)
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = host.Process.Kill(); _ = host.Wait() })

	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("escape-inside")})
	info := a.get(t, id)
	if info.Security == nil {
		t.Fatal("GET answers no security")
	}
	sec := *info.Security
	if !sec.UserNamespace || sec.IdMap == nil || sec.IdMap.HostId == 0 || sec.IdMap.Size == 0 {
		t.Errorf("a default sandbox reports security %+v, want a user namespace mapping root to a non-zero range", sec)
	}
	if !sec.NoNewPrivileges || !sec.Seccomp || sec.ReadOnlyRootfs {
		t.Errorf("a default sandbox reports no_new_privileges %v, seccomp %v, read_only_rootfs %v; want on, on, off", sec.NoNewPrivileges, sec.Seccomp, sec.ReadOnlyRootfs)
	}
	if info.Limits == nil || agenttest.Deref(info.Limits.Pids) != 1024 {
		t.Errorf("a default sandbox's limits.pids is %d, want 1024", agenttest.Deref(agenttest.Deref(info.Limits).Pids))
	}

	t.Run("uid-map", func(t *testing.T) {
		f := strings.Fields(a.sh(t, id, "cat /proc/self/uid_map"))
		if len(f) != 3 || f[0] != "0" || f[1] == "0" {
			t.Fatalf("uid_map %q, want root mapped to a non-zero range", f)
		}
		if sec.IdMap != nil && (f[1] != strconv.FormatUint(uint64(sec.IdMap.HostId), 10) || f[2] != strconv.FormatUint(uint64(sec.IdMap.Size), 10)) {
			t.Errorf("uid_map %q, but GET reports id_map %+v", f, *sec.IdMap)
		}
		if g := strings.Fields(a.sh(t, id, "cat /proc/self/gid_map")); !slices.Equal(g, f) {
			t.Errorf("gid_map %q, uid_map %q; want the same range", g, f)
		}
	})

	t.Run("files-not-given", func(t *testing.T) {
		agentPid := a.PID()
		for _, p := range []string{
			secret,
			"/proc/1/root" + secret,
			fmt.Sprintf("/proc/%d/root%s", agentPid, secret),
			fmt.Sprintf("/proc/%d/root/etc/hostname", agentPid),
		} {
			a.fails(t, id, "read "+p, "cat "+p)
		}
		a.fails(t, id, "list the agent's state dir", "ls "+a.stateDir)
		a.fails(t, id, "list the agent's state dir through /proc", fmt.Sprintf("ls /proc/%d/root%s", agentPid, a.stateDir))
	})

	t.Run("processes", func(t *testing.T) {
		out := a.sh(t, id, `for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr '\0' ' ' < $p/cmdline 2>/dev/null)"; done`)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) > 10 {
			t.Errorf("%d processes visible in the sandbox, want only its own few:\n%s", len(lines), out)
		}
		for _, l := range lines {
			if strings.Contains(l, hostMark) || strings.Contains(l, "--state-dir") {
				t.Errorf("a guest process is visible in the sandbox: %s", l)
			}
		}
	})

	t.Run("status", func(t *testing.T) {
		st := procStatus(a.sh(t, id, "cat /proc/self/status"))
		if st["NoNewPrivs"] != "1" {
			t.Errorf("NoNewPrivs %q, want 1", st["NoNewPrivs"])
		}
		if st["Seccomp"] != "2" {
			t.Errorf("Seccomp %q, want 2 (filter)", st["Seccomp"])
		}
		want, err := capMask(sec.Capabilities)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("capabilities %v: %016x", sec.Capabilities, want)
		for _, field := range []string{"CapEff", "CapPrm"} {
			got, err := strconv.ParseUint(st[field], 16, 64)
			if err != nil || got != want {
				t.Errorf("%s %q, want %016x (the reported %v)", field, st[field], want, sec.Capabilities)
			}
		}
		if got, err := strconv.ParseUint(st["CapBnd"], 16, 64); err != nil || got&^want != 0 {
			t.Errorf("CapBnd %q holds capabilities beyond the reported %v (%016x)", st["CapBnd"], sec.Capabilities, want)
		}
		for _, field := range []string{"CapInh", "CapAmb"} {
			if got, err := strconv.ParseUint(st[field], 16, 64); err != nil || got != 0 {
				t.Errorf("%s %q, want none", field, st[field])
			}
		}
		for _, c := range []string{"CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO", "CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_SYS_BOOT", "CAP_MKNOD"} {
			if slices.Contains(normCaps(sec.Capabilities), c) {
				t.Errorf("the capability set holds %s", c)
			}
		}
	})

	t.Run("mount", func(t *testing.T) {
		a.fails(t, id, "mount a tmpfs", "mkdir -p /tmp/m && mount -t tmpfs x /tmp/m")
		a.fails(t, id, "bind-mount", "mkdir -p /tmp/m && mount --bind /bin /tmp/m")
		a.fails(t, id, "mount in a user namespace of its own", "mkdir -p /tmp/m && unshare -U -r -m mount -t tmpfs x /tmp/m")
		if out := a.sh(t, id, "grep -c ' /tmp/m ' /proc/mounts || true"); strings.TrimSpace(out) != "0" {
			t.Errorf("/tmp/m is mounted: %q", out)
		}
	})

	t.Run("modules", func(t *testing.T) {
		stderr := a.fails(t, id, "load a module", "head -c 4096 /dev/zero > /tmp/x.ko && insmod /tmp/x.ko")
		// The kernel parsing it (and finding it no module) would mean
		// the load was permitted.
		if strings.Contains(stderr, "invalid module format") || strings.Contains(stderr, "Exec format") {
			t.Errorf("insmod reached the module loader: %s", stderr)
		}
		t.Logf("insmod: %s", strings.TrimSpace(stderr))
	})

	t.Run("proc-sys", func(t *testing.T) {
		a.fails(t, id, "write /proc/sys", "echo 1 > /proc/sys/kernel/sysrq")
		a.fails(t, id, "write /proc/sysrq-trigger", "echo h > /proc/sysrq-trigger")
		a.fails(t, id, "write /sys", "echo x > /sys/kernel/uevent_helper")
	})
	a.remove(t, id, false)
}

// procStatus parses /proc/<pid>/status.
func procStatus(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// capNumbers are the capabilities' numbers, by name.
var capNumbers = map[string]int{
	"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"CAP_FOWNER": unix.CAP_FOWNER, "CAP_FSETID": unix.CAP_FSETID, "CAP_KILL": unix.CAP_KILL, "CAP_SETGID": unix.CAP_SETGID,
	"CAP_SETUID": unix.CAP_SETUID, "CAP_SETPCAP": unix.CAP_SETPCAP, "CAP_LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE,
	"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "CAP_NET_BROADCAST": unix.CAP_NET_BROADCAST, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
	"CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_IPC_LOCK": unix.CAP_IPC_LOCK, "CAP_IPC_OWNER": unix.CAP_IPC_OWNER,
	"CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO, "CAP_SYS_CHROOT": unix.CAP_SYS_CHROOT,
	"CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE, "CAP_SYS_PACCT": unix.CAP_SYS_PACCT, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"CAP_SYS_BOOT": unix.CAP_SYS_BOOT, "CAP_SYS_NICE": unix.CAP_SYS_NICE, "CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
	"CAP_SYS_TIME": unix.CAP_SYS_TIME, "CAP_SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG, "CAP_MKNOD": unix.CAP_MKNOD,
	"CAP_LEASE": unix.CAP_LEASE, "CAP_AUDIT_WRITE": unix.CAP_AUDIT_WRITE, "CAP_AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL,
	"CAP_SETFCAP": unix.CAP_SETFCAP, "CAP_MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE, "CAP_MAC_ADMIN": unix.CAP_MAC_ADMIN,
	"CAP_SYSLOG": unix.CAP_SYSLOG, "CAP_WAKE_ALARM": unix.CAP_WAKE_ALARM, "CAP_BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND,
	"CAP_AUDIT_READ": unix.CAP_AUDIT_READ, "CAP_PERFMON": unix.CAP_PERFMON, "CAP_BPF": unix.CAP_BPF,
	"CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// normCaps spells capabilities as CAP_NAME, whichever way they came.
func normCaps(caps []string) []string {
	var out []string
	for _, c := range caps {
		c = strings.ToUpper(c)
		if !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		out = append(out, c)
	}
	return out
}

// capMask is the bit mask of a capability list, as /proc/<pid>/status
// shows it.
func capMask(caps []string) (uint64, error) {
	var m uint64
	for _, c := range normCaps(caps) {
		n, ok := capNumbers[c]
		if !ok {
			return 0, fmt.Errorf("unknown capability %q", c)
		}
		m |= 1 << n
	}
	return m, nil
}

// sandboxCgroup finds the cgroup (v2) of sandbox id on the machine.
func sandboxCgroup(t testing.TB, id string) string {
	t.Helper()
	var found []string
	_ = filepath.WalkDir("/sys/fs/cgroup", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == id {
			if _, err := os.Stat(filepath.Join(p, "pids.max")); err == nil {
				found = append(found, p)
			}
		}
		return nil
	})
	if len(found) != 1 {
		t.Fatalf("cgroups of %s with a pids controller: %v, want one", id, found)
	}
	return found[0]
}

// cgroupValue reads a cgroup file's value; for a flat keyed file (such as
// pids.events) key names the line.
func cgroupValue(t testing.TB, dir, file, key string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	if key == "" {
		return strings.TrimSpace(string(data))
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// forkBomb is a fork bomb that, once lit, holds its run open by exec
// (which needs no new process), so the run lasts until it is killed.
const forkBomb = `exec >/dev/null 2>&1; b() { b | b & }; b; exec sleep 1000000`

// lightForkBomb creates sandbox id with a pids limit of pidsLimit, lights
// a fork bomb in it, and waits until the kernel has refused it a fork (its
// cgroup's pids.events counts one). It returns the sandbox's cgroup and a
// function that stops the sandbox and waits for the bomb's run to end.
func (a *agentProc) lightForkBomb(t testing.TB, id string, pidsLimit int) (cgroup string, stop func()) {
	t.Helper()
	a.create(t, api.CreateSandboxRequest{Id: &id, Limits: &api.Limits{Pids: agenttest.Ptr(int64(pidsLimit))}})
	cgroup = sandboxCgroup(t, id)
	if parent := filepath.Base(filepath.Dir(cgroup)); parent != a.cgroupParent() {
		// The suite's leak check (removeAgentCgroups) looks there.
		t.Errorf("the cgroup %s is not under the agent's parent %s", cgroup, a.cgroupParent())
	}
	if got := cgroupValue(t, cgroup, "pids.max", ""); got != strconv.Itoa(pidsLimit) {
		t.Errorf("pids.max of %s is %s, want %d", cgroup, got, pidsLimit)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan runResult, 1)
	go func() {
		done <- a.runNDJSON(ctx, t, id, api.RunRequest{Cmd: []string{"sh", "-c", forkBomb}}, nil)
	}()
	deadline := time.Now().Add(time.Minute)
	for cgroupValue(t, cgroup, "pids.events", "max") == "0" {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("no fork was refused within a minute: pids.current %s", cgroupValue(t, cgroup, "pids.current", ""))
		}
		if n, _ := strconv.Atoi(cgroupValue(t, cgroup, "pids.current", "")); n > pidsLimit {
			t.Errorf("pids.current %d past the limit %d", n, pidsLimit)
		}
		time.Sleep(10 * time.Millisecond) // polling the kernel's counter
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			defer cancel()
			r, err := a.Client(t).StopSandboxWithResponse(reqCtx(t), id, api.StopSandboxRequest{TimeoutSeconds: agenttest.Ptr[int64](1)})
			if err != nil {
				t.Error(err)
			} else if r.JSON200 == nil || r.JSON200.State != "stopped" {
				t.Errorf("stop %s with its fork bomb: %d %s", id, r.StatusCode(), r.Body)
			}
			select {
			case <-done:
			case <-time.After(waitTimeout):
				t.Errorf("the fork bomb's run did not end within %s of the stop", waitTimeout)
			}
		})
	}
	t.Cleanup(stop)
	return cgroup, stop
}

// TestEscapeForkBomb: a fork bomb in a sandbox with limits.pids 64 never
// has more than 64 processes (its cgroup's pids.current, and pids.peak
// where the kernel has it), while the agent answers ping; the sandbox
// stops and is removed without a trace.
func TestEscapeForkBomb(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	const limit = 64
	const id = "fork-bomb"
	cgroup, stop := a.lightForkBomb(t, id, limit)
	if info := a.get(t, id); info.Limits == nil || agenttest.Deref(info.Limits.Pids) != limit {
		t.Errorf("GET reports limits.pids %d, want %d", agenttest.Deref(agenttest.Deref(info.Limits).Pids), limit)
	}
	c := a.Client(t)
	for range 20 {
		if r, err := c.GetPingWithResponse(reqCtx(t)); err != nil || r.JSON200 == nil {
			t.Fatalf("ping during the fork bomb: %v %v", err, r)
		}
		if n, _ := strconv.Atoi(cgroupValue(t, cgroup, "pids.current", "")); n > limit {
			t.Errorf("pids.current %d past the limit %d", n, limit)
		}
	}
	if peak, err := os.ReadFile(filepath.Join(cgroup, "pids.peak")); err == nil {
		if n, _ := strconv.Atoi(strings.TrimSpace(string(peak))); n > limit {
			t.Errorf("pids.peak %d past the limit %d", n, limit)
		}
	}
	t.Logf("refused forks: %s", cgroupValue(t, cgroup, "pids.events", "max"))
	stop()
	a.remove(t, id, false)
}

// TestEscapeSymlinkSwap: while a goroutine swaps (renameat2 EXCHANGE, in a
// tight loop) a mount source's last component, and another's middle one,
// with symlinks to /etc and to a directory outside the mount roots,
// creates race it. Each create is refused (400 naming the source), fails,
// or mounts the real directories: no sandbox sees /etc or the outside.
// Some must mount the real ones, or the race was never run.
func TestEscapeSymlinkSwap(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	root := mountDir(t)
	outside := filepath.Join(suite.dir, "escape-swap-outside")
	writeFile(t, filepath.Join(outside, "sub", "outside-marker"), "outside\n", 0o644)
	t.Cleanup(func() { os.RemoveAll(outside) })
	writeFile(t, filepath.Join(root, "last", "last-marker"), "real\n", 0o644)
	writeFile(t, filepath.Join(root, "middle", "sub", "middle-marker"), "real\n", 0o644)
	if err := os.Symlink("/etc", filepath.Join(root, "last-swap")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "middle-swap")); err != nil {
		t.Fatal(err)
	}

	stopSwap := make(chan struct{})
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stopSwap:
				return
			default:
			}
			for _, n := range []string{"last", "middle"} {
				if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(root, n), unix.AT_FDCWD, filepath.Join(root, n+"-swap"), unix.RENAME_EXCHANGE); err != nil {
					t.Errorf("swap %s: %v", n, err)
					return
				}
			}
			swaps.Add(1)
		}
	})
	defer func() { close(stopSwap); wg.Wait() }()

	mounts := []api.Mount{
		{Source: filepath.Join(root, "last"), Target: "/a", Readonly: agenttest.Ptr(true)},
		{Source: filepath.Join(root, "middle", "sub"), Target: "/b", Readonly: agenttest.Ptr(true)},
	}
	// Rounds go on until one mounted the real sources (about one in four
	// finds both real when it looks; a hundred rounds without one is a
	// chance of 1e-12), so that refusing everything does not pass.
	const minRounds, maxRounds = 24, 100
	var rounds, mounted, refused, failed int
	for i := 0; i < maxRounds && (i < minRounds || mounted == 0); i++ {
		rounds++
		id := fmt.Sprintf("swap-%d", i)
		evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
		r, err := a.Client(t).CreateSandboxWithResponse(reqCtx(t), api.CreateSandboxRequest{Id: &id, Mounts: &mounts})
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case r.JSON400 != nil:
			if !strings.Contains(r.JSON400.Message, "mounts[") {
				t.Errorf("create %s refused with %q, want the mount named", id, r.JSON400.Message)
			}
			refused++
			a.assertGone(t, id)
			continue
		case r.JSON202 == nil:
			t.Fatalf("create %s: %d %s", id, r.StatusCode(), r.Body)
		}
		a.cleanupSandbox(t, id)
		if ev := waitReadyOrFailed(evs, id); ev.Action == "failed" {
			failed++
			t.Logf("%s failed: %v", id, attrs(ev))
		} else {
			mounted++
			out := a.sh(t, id, "ls /a; echo --; ls /b")
			if out != "last-marker\n--\nmiddle-marker\n" {
				t.Errorf("%s sees through its mounts:\n%s\nwant only the markers of the real sources", id, out)
			}
		}
		a.remove(t, id, true)
	}
	t.Logf("%d rounds against %d swaps: %d mounted the real sources, %d refused, %d failed", rounds, swaps.Load(), mounted, refused, failed)
	if mounted == 0 {
		t.Errorf("none of %d creates mounted the real sources: the check was never passed, so the race was not run", rounds)
	}
}

// waitReadyOrFailed reads id's events until it is ready or failed.
func waitReadyOrFailed(evs *eventStream, id string) api.Event {
	for {
		if ev := evs.next(); ev.SandboxId == id && (ev.Action == "ready" || ev.Action == "failed") {
			return ev
		}
	}
}

// basicAuthRegistry is a registry on 127.0.0.1 that answers only requests
// with these basic credentials (401 with a Basic challenge otherwise).
func basicAuthRegistry(t testing.TB, user, password string) *httptest.Server {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="arcbox-test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestEscapeRegistry: an image from a loopback registry is a 400 naming
// image, without a request to the registry, on an agent that lists no
// registry and on one that lists another; a basic-auth registry that is
// listed serves a create that brings registry_auth (and not one that does
// not), and the password is then nowhere: not in the agent's log, not in
// any file under its directory, not in GET or list answers.
func TestEscapeRegistry(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	reg := testregistry.New(t)
	ref := reg.Host() + "/test/escape:1"
	reg.Push(t, ref, busyboxImage(t, "escape-"+time.Now().Format(time.RFC3339Nano)))
	before := reg.Gets("/")

	t.Run("unlisted", func(t *testing.T) {
		a := sharedAgent(t)
		a.LogOnFailure(t)
		a.refused(t, api.CreateSandboxRequest{Id: agenttest.Ptr("unlisted-registry"), Image: &ref}, "image")
		other := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "escape-other-registry")}, registries: []string{"127.0.0.1:1"}})
		other.refused(t, api.CreateSandboxRequest{Id: agenttest.Ptr("other-registry"), Image: &ref}, "image")
		for i, loop := range []string{"localhost", "[::1]", "127.0.0.2"} {
			other.refused(t, api.CreateSandboxRequest{Id: agenttest.Ptr(fmt.Sprintf("loopback-alias-%d", i)), Image: agenttest.Ptr(strings.Replace(ref, "127.0.0.1", loop, 1))}, "image")
		}
		if n := reg.Gets("/"); n != before {
			t.Errorf("the registry served %d requests for refused creates", n-before)
		}
	})

	t.Run("credentials", func(t *testing.T) {
		const user = "escape-user"
		password := "pw-" + randomHex(t, 16)
		srv := basicAuthRegistry(t, user, password)
		host := strings.TrimPrefix(srv.URL, "http://")
		authRef := host + "/test/private:1"
		tag, err := name.ParseReference(authRef, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(tag, busyboxImage(t, "private-"+time.Now().Format(time.RFC3339Nano)), remote.WithAuth(&authn.Basic{Username: user, Password: password})); err != nil {
			t.Fatalf("push %s: %v", authRef, err)
		}
		a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "escape-credentials")}, registries: []string{host}})
		secrets := []string{password, base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}
		// Whatever became of the creates: the files the agent wrote, its
		// log included, never hold the password.
		t.Cleanup(func() {
			for _, f := range filesHolding(t, a.Dir, secrets) {
				t.Errorf("%s holds the registry password", f)
			}
		})

		const anon = "no-credentials"
		evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(anon)})
		// Refused at once, or failed once the pull is turned away.
		r, err := a.Client(t).CreateSandboxWithResponse(reqCtx(t), api.CreateSandboxRequest{Id: agenttest.Ptr(anon), Image: &authRef})
		if err != nil {
			t.Fatal(err)
		}
		if r.JSON202 != nil {
			a.cleanupSandbox(t, anon)
			if ev := waitReadyOrFailed(evs, anon); ev.Action != "failed" {
				t.Errorf("a create without credentials of a private image: %s, want failed", ev.Action)
			}
			a.remove(t, anon, false)
		} else if r.StatusCode() < 400 {
			t.Errorf("a create without credentials of a private image: %d %s", r.StatusCode(), r.Body)
		}

		id := a.create(t, api.CreateSandboxRequest{
			Id:           agenttest.Ptr("with-credentials"),
			Image:        &authRef,
			RegistryAuth: &api.RegistryAuth{Username: agenttest.Ptr(user), Password: &password},
		})
		if out := a.sh(t, id, "cat /etc/motd"); out != "baked in\n" {
			t.Errorf("the private image's /etc/motd: %q", out)
		}
		for what, body := range a.answers(t, id) {
			for _, s := range secrets {
				if bytes.Contains(body, []byte(s)) {
					t.Errorf("%s holds the registry password: %s", what, body)
				}
			}
		}
		for _, f := range filesHolding(t, a.Dir, secrets) { // the live sandbox's records
			t.Errorf("%s holds the registry password", f)
		}
		a.remove(t, id, false)
	})
}

// answers are the agent's GET and list answers about id.
func (a *agentProc) answers(t testing.TB, id string) map[string][]byte {
	t.Helper()
	c := a.Client(t)
	g, err := c.GetSandboxWithResponse(reqCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.ListSandboxesWithResponse(reqCtx(t), &api.ListSandboxesParams{})
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{"GET " + id: g.Body, "GET /v1/sandboxes": l.Body}
}

// filesHolding lists the regular files under dir that hold any of the
// strings.
func filesHolding(t testing.TB, dir string, strs []string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		for _, s := range strs {
			if bytes.Contains(data, []byte(s)) {
				found = append(found, p)
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestEscapeOptions: a sandbox made with security.user_namespace false
// runs as the guest's root and GET and list say so (and say the default
// sandbox has one); read_only_rootfs makes the root read-only (touch /x
// fails) but leaves /tmp writable, and GET reports it.
func TestEscapeOptions(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)

	t.Run("host-users", func(t *testing.T) {
		host := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("host-users"), Security: &api.SecuritySpec{UserNamespace: agenttest.Ptr(false)}})
		def := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("default-users")})
		if sec := a.security(t, host); sec.UserNamespace || sec.IdMap != nil {
			t.Errorf("GET of a sandbox without a user namespace: security %+v, want user_namespace false and no id_map", sec)
		}
		list := a.listSecurity(t)
		if sec := list[host]; sec == nil || sec.UserNamespace {
			t.Errorf("the list's %s: security %+v, want user_namespace false", host, sec)
		}
		if sec := list[def]; sec == nil || !sec.UserNamespace {
			t.Errorf("the list's %s: security %+v, want user_namespace true", def, sec)
		}
		if f := strings.Fields(a.sh(t, host, "cat /proc/self/uid_map")); len(f) != 3 || f[0] != "0" || f[1] != "0" {
			t.Errorf("uid_map without a user namespace: %q, want the identity", f)
		}
		st := procStatus(a.sh(t, host, "cat /proc/self/status"))
		if st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
			t.Errorf("without a user namespace: NoNewPrivs %q, Seccomp %q; want them kept", st["NoNewPrivs"], st["Seccomp"])
		}
		a.remove(t, host, false)
		a.remove(t, def, false)
	})

	t.Run("read-only-rootfs", func(t *testing.T) {
		id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("read-only-rootfs"), Security: &api.SecuritySpec{ReadOnlyRootfs: agenttest.Ptr(true)}})
		if sec := a.security(t, id); !sec.ReadOnlyRootfs || !sec.UserNamespace {
			t.Errorf("GET: security %+v, want read_only_rootfs (and the default user namespace)", sec)
		}
		a.fails(t, id, "write the read-only root", "touch /x")
		if out := a.sh(t, id, "touch /tmp/x && echo ok"); out != "ok\n" {
			t.Errorf("writing /tmp: %q", out)
		}
		a.remove(t, id, false)
	})
}
