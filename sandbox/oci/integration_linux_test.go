package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"golang.org/x/sys/unix"
)

var runtimes = []string{"crun", "runc"}

// TestOCILifecycle runs the basic life of a sandbox on each runtime:
// ready seen on a subscription, output and exit codes, a concurrent run
// refused, no stray file descriptor reaching the sandbox, stop and remove.
func TestOCILifecycle(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			e := newOCIEnv(t, rt)
			info, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: "life-" + rt, Labels: map[string]string{"rt": rt}})
			if err != nil {
				t.Fatal(err)
			}
			e.track(info.ID)
			if info.State != sandbox.StateStarting {
				t.Errorf("Create returned %s, want starting", info.State)
			}
			e.expect(info.ID, sandbox.ActionCreated, sandbox.ActionReady)
			id := info.ID

			out, errOut, code := e.run(id, sandbox.Process{Cmd: []string{"echo", "hi"}})
			if out != "hi\n" || errOut != "" || code != 0 {
				t.Errorf("echo hi = %q, %q, %d; want hi, nothing, 0", out, errOut, code)
			}
			out, errOut, code = e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "echo x >&2; exit 3"}})
			if out != "" || errOut != "x\n" || code != 3 {
				t.Errorf("sh exit 3 = %q, %q, %d; want nothing, x, 3", out, errOut, code)
			}
			evs := e.expect(id, sandbox.ActionRunning, sandbox.ActionIdle, sandbox.ActionRunning, sandbox.ActionIdle)
			if evs[3].Attributes["exit_code"] != "3" {
				t.Errorf("idle event %v, want exit_code 3", evs[3].Attributes)
			}
			if got, _ := e.m.Get(id); got.LastExitCode == nil || *got.LastExitCode != 3 || got.State != sandbox.StateReady {
				t.Errorf("Get = %+v, want ready with last exit 3", got)
			}

			// No descriptor of the agent reaches the sandbox: the init has
			// /dev/null as 0-2, the agent's listening socket, and beyond
			// them only what its Go runtime opens itself (the netpoller's,
			// the sandbox's own cgroup CPU files), seen from the host: the
			// init is not dumpable, so nothing in the sandbox can look at
			// them (or take the socket); a workload has its stdio and what
			// ls opens (3, the directory it lists).
			if out, _, code := e.run(id, sandbox.Process{Cmd: []string{"readlink", "/proc/1/fd/0"}}); code == 0 {
				t.Errorf("the sandbox can read its init's descriptors: %q", out)
			}
			initPid, _ := e.runtimeState(id)
			initSockets := func() int {
				entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", initPid))
				if err != nil {
					t.Fatal(err)
				}
				sockets := 0
				for _, ent := range entries {
					target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", initPid, ent.Name()))
					std := slices.Contains([]string{"0", "1", "2"}, ent.Name()) && target == "/dev/null"
					runtime := strings.HasPrefix(target, "/sys/fs/cgroup/cpu") || strings.HasPrefix(target, "anon_inode:") || strings.HasPrefix(target, "pipe:")
					if strings.HasPrefix(target, "socket:") {
						sockets++
					} else if !std && !runtime {
						t.Errorf("init fd %s: %q; want 0-2 on /dev/null, the agent's socket, and the Go runtime's own", ent.Name(), target)
					}
				}
				return sockets
			}
			// The last run's connection may still be closing.
			sandboxtest.WaitFor(t, "the init to hold only its listening socket", func() bool { return initSockets() == 1 })
			own := strings.Fields(e.sh(id, "ls /proc/self/fd"))
			if len(own) > 4 || !slices.Equal(own[:3], []string{"0", "1", "2"}) {
				t.Errorf("workload fds %v; want 0 1 2 and ls's own 3", own)
			}

			// The init reaps orphans: a background child outliving its
			// shell is re-parented to it and must not stay a zombie.
			e.sh(id, "true & exit 0")
			sandboxtest.WaitFor(t, "orphans reaped", func() bool {
				return !strings.Contains(e.sh(id, "ps -o stat | grep ^Z || true"), "Z")
			})

			// A second run while one runs runs too.
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() {
				_, err := e.m.Run(ctx, id, sandbox.Process{Cmd: []string{"sleep", "1000"}}, nil)
				done <- err
			}()
			e.waitState(id, sandbox.StateRunning)
			if code, err := e.m.Run(context.Background(), id, sandbox.Process{Cmd: []string{"true"}}, nil); code != 0 || err != nil {
				t.Errorf("concurrent Run = %d, %v; want 0, nil", code, err)
			}
			// While a run is in progress (its pipes, pidfds and the
			// init's pidfd open), every descriptor of the agent past
			// stdio is close-on-exec: a runtime it starts inherits only
			// what it is given.
			checkCloexec(t)
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("cancelled Run: %v", err)
			}
			e.waitState(id, sandbox.StateReady)

			stopped, err := e.m.Stop(context.Background(), id, time.Second)
			if err != nil || stopped.State != sandbox.StateStopped {
				t.Fatalf("Stop = %+v, %v", stopped, err)
			}
			e.expect(id, sandbox.ActionStopping, sandbox.ActionStopped)
			checkNoMounts(t, filepath.Join(e.cfg.StateDir, "sandboxes", id, "rootfs"))
			if err := e.m.Remove(context.Background(), id, false); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			e.expect(id, sandbox.ActionRemoved)
			checkNothingLeft(t, e.cfg, e.runtime, id)
		})
	}
}

// TestOCILargeOutput sends 100 MiB of random bytes through Run and checks
// they arrive whole and in order against a hash made in the sandbox.
func TestOCILargeOutput(t *testing.T) {
	e := newOCIEnv(t, "crun")
	id := e.create(sandbox.Spec{ID: "big"}).ID
	h := sha256.New()
	var inside bytes.Buffer
	var n int64
	code, err := e.m.Run(context.Background(), id, sandbox.Process{Cmd: []string{"sh", "-c",
		"head -c 104857600 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob && rm /tmp/blob"}},
		func(o sandbox.Output) error {
			if o.Stream == sandbox.StreamStdout {
				n += int64(len(o.Data))
				h.Write(o.Data)
			} else {
				inside.Write(o.Data)
			}
			return nil
		})
	if err != nil || code != 0 {
		t.Fatalf("Run = %d, %v; stderr %q", code, err, inside.String())
	}
	want := strings.Fields(inside.String())
	got := hex.EncodeToString(h.Sum(nil))
	if n != 100<<20 || len(want) == 0 || want[0] != got {
		t.Fatalf("received %d bytes hashing %s; the sandbox hashed %q", n, got, inside.String())
	}
}

// TestOCIKillPaths: a client that goes away hangs the command up
// (SIGHUP; one that ignores it is killed with its children after the
// grace), a timeout kills the command and its children, and the sandbox
// is ready again.
func TestOCIKillPaths(t *testing.T) {
	e := newOCIEnv(t, "crun")
	id := e.create(sandbox.Spec{ID: "kill"}).ID

	for _, c := range []struct {
		cmd, waitFor string
		want         int
	}{
		{"exec sleep 1000", "sleep 1000", 128 + int(unix.SIGHUP)},
		// A hang-up reaches the children too, as a terminal's whole session.
		{"sleep 1007 & exec sleep 1008", "sleep 1008", 128 + int(unix.SIGHUP)},
		{"trap '' HUP; sleep 1001 & sleep 1002; echo never", "sleep 1002", sandbox.ExitKilled},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		var code int
		go func() {
			var err error
			code, err = e.m.Run(ctx, id, sandbox.Process{Cmd: []string{"sh", "-c", c.cmd}}, nil)
			done <- err
		}()
		e.expect(id, sandbox.ActionRunning)
		e.waitProcess(id, c.waitFor)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) || code != c.want {
			t.Fatalf("%s: Run after cancel = %d, %v; want %d, context.Canceled", c.cmd, code, err, c.want)
		}
		e.expect(id, sandbox.ActionIdle)
		if got, _ := e.m.Get(id); got.State != sandbox.StateReady {
			t.Fatalf("%s: after cancel: %s, want ready", c.cmd, got.State)
		}
		if ps := e.sh(id, "ps -o stat,args | grep -v '^Z'"); strings.Contains(ps, "sleep") {
			t.Errorf("%s: processes left after cancel:\n%s", c.cmd, ps)
		}
	}

	var c liveOut
	code, err := e.m.Run(context.Background(), id, sandbox.Process{Cmd: []string{"sh", "-c", "echo started; sleep 1003"}, Timeout: 300 * time.Millisecond}, c.out)
	if err != nil || code != sandbox.ExitKilled || c.String() != "started\n" {
		t.Fatalf("Run past timeout = %d, %v, %q; want 137, nil, started", code, err, c.String())
	}
	if got, _ := e.m.Get(id); got.LastExitCode == nil || *got.LastExitCode != sandbox.ExitKilled {
		t.Errorf("last exit %v, want 137", got.LastExitCode)
	}
	if ps := e.sh(id, "ps -o stat,args | grep -v '^Z'"); strings.Contains(ps, "sleep") {
		t.Errorf("processes left after timeout:\n%s", ps)
	}

	// A background child that keeps stdout open does not hold the run
	// once the command has exited (it keeps running, as a daemon would).
	out, _, code := e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "sleep 1006 & echo hi"}})
	if out != "hi\n" || code != 0 {
		t.Errorf("run leaving a background child = %q, %d", out, code)
	}
	if ps := e.sh(id, "ps -o args"); !strings.Contains(ps, "sleep 1006") {
		t.Errorf("the background child is gone:\n%s", ps)
	}
}

// waitProcess waits until a process with args runs in the sandbox, seen
// from the host through the sandbox's init's pid namespace.
func (e *ociEnv) waitProcess(id, args string) {
	e.t.Helper()
	pid, _ := e.runtimeState(id)
	ns, err := pidNamespace(pid)
	if err != nil {
		e.t.Fatal(err)
	}
	sandboxtest.WaitFor(e.t, "process "+args, func() bool {
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			data, err := os.ReadFile(p)
			if err != nil || string(bytes.ReplaceAll(bytes.TrimRight(data, "\x00"), []byte{0}, []byte{' '})) != args {
				continue
			}
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if got, err := pidNamespace(pid); err == nil && got == ns {
				return true
			}
		}
		return false
	})
}

// TestOCIStopGrace: Stop sends the workload SIGTERM, then SIGKILL after
// the timeout, and ends the sandbox.
func TestOCIStopGrace(t *testing.T) {
	e := newOCIEnv(t, "crun")
	id := e.create(sandbox.Spec{ID: "grace"}).ID
	done := make(chan int)
	go func() {
		code, _ := e.m.Run(context.Background(), id, sandbox.Process{Cmd: []string{"sh", "-c", "trap 'echo term' TERM; while true; do sleep 1; done"}}, nil)
		done <- code
	}()
	e.expect(id, sandbox.ActionRunning)
	e.waitProcess(id, "sleep 1")
	begin := time.Now()
	info, err := e.m.Stop(context.Background(), id, 500*time.Millisecond)
	if err != nil || info.State != sandbox.StateStopped {
		t.Fatalf("Stop = %+v, %v", info, err)
	}
	if took := time.Since(begin); took < 500*time.Millisecond {
		t.Errorf("Stop took %v: it did not wait for the workload", took)
	}
	if code := <-done; code != sandbox.ExitKilled {
		t.Errorf("workload exit %d, want 137", code)
	}
	e.expect(id, sandbox.ActionStopping, sandbox.ActionStopped)
}

// TestOCITTL: a sandbox with a TTL is stopped and removed on its own.
func TestOCITTL(t *testing.T) {
	e := newOCIEnv(t, "crun")
	info, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: "ttl", TTL: 700 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.track(info.ID)
	e.expect("ttl", sandbox.ActionReady, sandbox.ActionStopping, sandbox.ActionStopped, sandbox.ActionRemoved)
	if _, err := e.m.Get("ttl"); !errors.Is(err, sandbox.ErrNotFound) {
		t.Errorf("after TTL: %v", err)
	}
	checkNothingLeft(t, e.cfg, e.runtime, "ttl")
}

// TestOCIFiltersAndCmd: label and state filters over real sandboxes, and
// a create cmd that runs once the sandbox is ready.
func TestOCIFiltersAndCmd(t *testing.T) {
	e := newOCIEnv(t, "crun")
	e.create(sandbox.Spec{ID: "fa", Labels: map[string]string{"team": "a"}})
	info, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: "fb", Labels: map[string]string{"team": "b"},
		Cmd: []string{"sh", "-c", "echo from-cmd > /tmp/mark; exit 4"}})
	if err != nil {
		t.Fatal(err)
	}
	e.track(info.ID)
	evs := e.expect("fb", sandbox.ActionReady, sandbox.ActionRunning, sandbox.ActionIdle)
	if evs[2].Attributes["exit_code"] != "4" {
		t.Errorf("create cmd idle %v, want exit_code 4", evs[2].Attributes)
	}
	if out := e.sh("fb", "cat /tmp/mark"); out != "from-cmd\n" {
		t.Errorf("the create cmd's file: %q", out)
	}
	if _, err := e.m.Stop(context.Background(), "fa", 0); err != nil {
		t.Fatal(err)
	}
	ids := func(f sandbox.Filter) string {
		var s []string
		for _, i := range e.m.List(f) {
			s = append(s, i.ID)
		}
		return strings.Join(s, ",")
	}
	if got := ids(sandbox.Filter{Labels: map[string]string{"team": "b"}}); got != "fb" {
		t.Errorf("label filter: %q", got)
	}
	if got := ids(sandbox.Filter{State: sandbox.StateStopped}); got != "fa" {
		t.Errorf("state filter: %q", got)
	}
	if got := ids(sandbox.Filter{State: sandbox.StateReady, Labels: map[string]string{"team": "b"}}); got != "fb" {
		t.Errorf("both filters: %q", got)
	}
}

// TestOCIBadInput: each kind of bad request gets its error class.
func TestOCIBadInput(t *testing.T) {
	e := newOCIEnv(t, "crun")
	ctx := context.Background()
	cases := []struct {
		spec  sandbox.Spec
		class error
		field string
	}{
		{sandbox.Spec{ID: "bad/id"}, sandbox.ErrInvalid, `"id"`},
		{sandbox.Spec{Kernel: "/boot/vmlinuz"}, sandbox.ErrInvalid, `"kernel"`},
		{sandbox.Spec{BootArgs: "quiet"}, sandbox.ErrInvalid, `"boot_args"`},
		{sandbox.Spec{SSHPublicKey: "ssh-ed25519 AAAA"}, sandbox.ErrInvalid, `"ssh_public_key"`},
		{sandbox.Spec{Mounts: []sandbox.Mount{{Source: "/nonexistent-src", Target: "/data"}}}, sandbox.ErrInvalid, `"mounts[0].source"`},
		{sandbox.Spec{Mounts: []sandbox.Mount{{Source: "/tmp", Target: "/../x"}}}, sandbox.ErrInvalid, `"mounts[0].target"`},
		{sandbox.Spec{Rootfs: "/nonexistent-rootfs"}, sandbox.ErrInvalid, `"rootfs"`},
		{sandbox.Spec{Image: "UPPER/case::bad"}, sandbox.ErrInvalid, `"image"`},
		{sandbox.Spec{NetworkMode: "host"}, sandbox.ErrInvalid, `"network.mode"`},
	}
	for _, c := range cases {
		_, _, err := e.m.Create(ctx, c.spec)
		if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Create(%+v) = %v; want %v naming %s", c.spec, err, c.class, c.field)
		}
	}
	if _, err := e.m.Run(ctx, "unknown", sandbox.Process{Cmd: []string{"true"}}, nil); !errors.Is(err, sandbox.ErrNotFound) {
		t.Errorf("Run unknown: %v", err)
	}
	id := e.create(sandbox.Spec{ID: "st"}).ID
	// As a shell says it: 127 and why on stderr.
	if _, errOut, code := e.run(id, sandbox.Process{Cmd: []string{"no-such-program"}}); code != 127 || !strings.Contains(errOut, `"no-such-program": executable file not found`) {
		t.Errorf("a missing program: exit %d, stderr %q; want 127 naming it", code, errOut)
	}
	if _, errOut, code := e.run(id, sandbox.Process{Cmd: []string{"true"}, WorkingDir: "/etc/passwd"}); code != 127 || !strings.Contains(errOut, "not a directory") {
		t.Errorf("a working dir that is a file: exit %d, stderr %q; want 127 saying why", code, errOut)
	}
	if _, err := e.m.Run(ctx, id, sandbox.Process{Cmd: []string{"true"}, User: "nosuchuser"}, nil); !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), `"user"`) {
		t.Errorf("Run as unknown user: %v", err)
	}
	if _, err := e.m.Stop(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Run(ctx, id, sandbox.Process{Cmd: []string{"true"}}, nil); !errors.Is(err, sandbox.ErrConflict) {
		t.Errorf("Run on stopped: %v, want ErrConflict", err)
	}
}

// TestOCIUserMountsRootfs: a rootfs directory with its own users; users by
// name and uid:gid; working dir and env; read-only and read-write bind
// mounts; the rootfs itself is never written.
func TestOCIUserMountsRootfs(t *testing.T) {
	e := newOCIEnv(t, "crun")
	rootfs := e.rootfsDir("users")
	if out, err := exec.Command("cp", "-a", testRootfs, rootfs).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	appendFile(t, filepath.Join(rootfs, "etc/passwd"), "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n")
	appendFile(t, filepath.Join(rootfs, "etc/group"), "alice:x:1000:\nstaff:x:50:alice\n")
	// rw is the sandbox's own volume directory: made for it, owned by
	// its root.
	ro, rw := e.sharedDir("ro"), filepath.Join(e.cfg.StateDir, "volumes", "users", "rw")
	if err := os.WriteFile(filepath.Join(ro, "in.txt"), []byte("host data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := e.create(sandbox.Spec{
		ID: "users", Rootfs: rootfs, WorkingDir: "/work/dir", User: "alice",
		Env:    map[string]string{"GREETING": "hello"},
		Mounts: []sandbox.Mount{{Source: ro, Target: "/ro", ReadOnly: true}, {Source: rw, Target: "/rw"}},
	}).ID

	if out := e.sh(id, "id -u; id -g; id -G; pwd; echo $GREETING $HOME"); out != "1000\n1000\n1000 50\n/work/dir\nhello /home/alice\n" {
		t.Errorf("as alice: %q", out)
	}
	out, _, _ := e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "id -u; id -g"}, User: "1234:5678"})
	if out != "1234\n5678\n" {
		t.Errorf("as 1234:5678: %q", out)
	}
	out, _, _ = e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "id -u; id -gn; echo $HOME"}, User: "root", WorkingDir: "/", Env: map[string]string{"X": "y"}})
	if out != "0\nroot\n/root\n" {
		t.Errorf("as root: %q", out)
	}
	if out := e.sh(id, "cat /ro/in.txt"); out != "host data\n" {
		t.Errorf("read-only mount: %q", out)
	}
	if _, _, code := e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "echo x > /ro/new"}, User: "0"}); code == 0 {
		t.Error("wrote into a read-only mount")
	}
	if _, _, code := e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "echo written > /rw/out.txt && echo changed > /etc/motd && rm /bin/ls"}, User: "0"}); code != 0 {
		t.Error("write into the read-write mount and the root failed")
	}
	if data, err := os.ReadFile(filepath.Join(rw, "out.txt")); err != nil || string(data) != "written\n" {
		t.Errorf("host side of the read-write mount: %q, %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "etc/motd")); !os.IsNotExist(err) {
		t.Errorf("the sandbox wrote into its rootfs directory: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "bin/ls")); err != nil {
		t.Errorf("the sandbox deleted from its rootfs directory: %v", err)
	}
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// TestOCILimitsAndNetwork: the memory and CPU limits are in the sandbox's
// cgroup, and network mode none leaves only loopback, up.
func TestOCILimitsAndNetwork(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			e := newOCIEnv(t, rt)
			id := e.create(sandbox.Spec{ID: "lim-" + rt, Limits: sandbox.Limits{VCPUs: 2, MemoryMiB: 64}}).ID
			mem := e.sh(id, "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
			if strings.TrimSpace(mem) != strconv.Itoa(64<<20) {
				t.Errorf("memory limit in the sandbox: %q, want %d", mem, 64<<20)
			}
			cpu := e.sh(id, "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")
			if f := strings.Fields(cpu); len(f) != 2 || f[0] != "200000" || f[1] != "100000" {
				t.Errorf("cpu quota in the sandbox: %q, want 200000 100000", cpu)
			}
			links := e.sh(id, "ip -o link")
			if lines := strings.Split(strings.TrimSpace(links), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "lo:") || !strings.Contains(lines[0], "UP") {
				t.Errorf("network interfaces: %q, want only lo, up", links)
			}
			if out := e.sh(id, "ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 && echo up || echo down"); out != "up\n" && out != "down\n" {
				t.Errorf("ping: %q", out)
			}
			// Hardening: seccomp filter on, no new privileges, and no user
			// namespace to gain capabilities in.
			if out := e.sh(id, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\t ' ' '"); out != "NoNewPrivs: 1\nSeccomp: 2\n" {
				t.Errorf("process status: %q, want NoNewPrivs 1 and Seccomp 2", out)
			}
			// The runtime, and so the workloads, run niced: the agent's
			// API comes first on a busy machine.
			if out := e.sh(id, "cut -d' ' -f19 /proc/self/stat"); out != "10\n" {
				t.Errorf("niceness in the sandbox: %q, want 10", out)
			}
			if _, errOut, code := e.run(id, sandbox.Process{Cmd: []string{"unshare", "-U", "-r", "true"}}); code == 0 {
				t.Errorf("unshare -U succeeded in a sandbox (stderr %q)", errOut)
			}
			if info, _ := e.m.Get(id); info.NetworkMode != sandbox.NetworkNone || info.IPAddress != "" || info.Limits != (sandbox.Limits{VCPUs: 2, MemoryMiB: 64, Pids: sandbox.DefaultLimits.Pids}) {
				t.Errorf("Get = %+v", info)
			}
		})
	}
}

// TestOCITerminalAndStdin: a run on a terminal, and stdin from a reader.
func TestOCITerminalAndStdin(t *testing.T) {
	e := newOCIEnv(t, "crun")
	id := e.create(sandbox.Spec{ID: "tty"}).ID
	out, _, code := e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "test -t 1 && echo tty"}, TTY: true})
	if code != 0 || out != "tty\r\n" {
		t.Errorf("on a terminal: %q, %d; want tty\\r\\n, 0", out, code)
	}
	out, _, _ = e.run(id, sandbox.Process{Cmd: []string{"sh", "-c", "test -t 1 && echo tty || echo pipe"}})
	if out != "pipe\n" {
		t.Errorf("without a terminal: %q", out)
	}
	var c liveOut
	code, err := e.m.Exec(context.Background(), id, sandbox.Process{Cmd: []string{"sh", "-c", "cat; echo done"}}, sandbox.ExecIO{Stdin: strings.NewReader("from stdin\n")}, c.out)
	if err != nil || code != 0 || c.String() != "from stdin\ndone\n" {
		t.Errorf("stdin: %q, %d, %v", c.String(), code, err)
	}
	pr, pw := io.Pipe()
	resize := make(chan sandbox.TTYSize, 1)
	resize <- sandbox.TTYSize{Width: 123, Height: 45}
	c = liveOut{}
	go func() {
		fmt.Fprintln(pw, "stty size; exit 5")
	}()
	code, err = e.m.Exec(context.Background(), id, sandbox.Process{Cmd: []string{"sh"}, TTY: true}, sandbox.ExecIO{Stdin: pr, Resize: resize}, c.out)
	pw.Close()
	if err != nil || code != 5 || !strings.Contains(c.String(), "45 123") {
		t.Errorf("terminal with stdin and resize: %q, %d, %v", c.String(), code, err)
	}
}

// TestOCIRestart: after an agent restart a live sandbox is still there and
// runs commands; one whose init was killed meanwhile is failed with the
// reason; one caught mid-run is ready with the run recorded as lost; one
// left frozen by a checkpoint cut short is thawed and ready.
func TestOCIRestart(t *testing.T) {
	e := newOCIEnv(t, "crun")
	e.create(sandbox.Spec{ID: "live"})
	e.create(sandbox.Spec{ID: "victim"})
	e.create(sandbox.Spec{ID: "midrun"})
	e.create(sandbox.Spec{ID: "frozen"})
	// The agent is to die during a run: its record as the run left it
	// (running) is kept, to be put back once the manager is closed.
	midrunRecord := filepath.Join(e.cfg.StateDir, "sandboxes", "midrun", "record")
	midrun := e.goExec(context.Background(), "midrun", sandbox.Process{Cmd: []string{"sleep", "1004"}}, sandbox.ExecIO{}, nil)
	e.waitProcess("midrun", "sleep 1004")
	running, err := os.ReadFile(midrunRecord)
	if err != nil {
		t.Fatal(err)
	}
	e.restart(func() {
		e.wait(midrun) // killed by the Close
		// The agent died while a checkpoint had the sandbox frozen.
		pause := exec.Command(e.runtime, "--root", filepath.Join(e.cfg.StateDir, "runtime"), "pause", "frozen")
		if out, err := pause.CombinedOutput(); err != nil {
			t.Fatalf("pause: %v: %s", err, out)
		}
		pid, _ := e.runtimeState("victim")
		w, err := watchPid(pid)
		if err != nil {
			t.Fatal(err)
		}
		defer w.close()
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if !w.wait(time.Minute) {
			t.Fatal("the victim's init outlived SIGKILL")
		}
		// The agent died during a run: the record says running and a
		// process of that run is still there.
		if err := os.WriteFile(midrunRecord, running, 0o600); err != nil {
			t.Fatal(err)
		}
		// Detached: the sleep must not hold a pipe of the test open.
		rt := exec.Command(e.runtime, "--root", filepath.Join(e.cfg.StateDir, "runtime"), "exec", "-d", "midrun", "sleep", "1004")
		if err := rt.Run(); err != nil {
			t.Fatalf("start a stray run: %v", err)
		}
	})
	if info, err := e.m.Get("live"); err != nil || info.State != sandbox.StateReady {
		t.Fatalf("live after restart: %+v, %v", info, err)
	}
	if out := e.sh("live", "echo still here"); out != "still here\n" {
		t.Errorf("live after restart: %q", out)
	}
	if info, err := e.m.Get("frozen"); err != nil || info.State != sandbox.StateReady {
		t.Errorf("frozen after restart: %+v, %v", info, err)
	}
	if out := e.sh("frozen", "echo thawed"); out != "thawed\n" {
		t.Errorf("frozen after restart: %q", out)
	}
	victim, _ := e.m.Get("victim")
	if victim.State != sandbox.StateFailed || !strings.Contains(victim.Error, "init exited while the agent was down") {
		t.Errorf("victim after restart: %+v", victim)
	}
	checkNoMounts(t, filepath.Join(e.cfg.StateDir, "sandboxes", "victim", "rootfs"))
	mid, _ := e.m.Get("midrun")
	if mid.State != sandbox.StateReady || mid.LastExitCode == nil || *mid.LastExitCode != sandbox.ExitLost || !strings.Contains(mid.Error, "lost") {
		t.Errorf("midrun after restart: %+v", mid)
	}
	if ps := e.sh("midrun", "ps -o stat,args | grep -v '^Z'"); strings.Contains(ps, "sleep") {
		t.Errorf("the lost run's process is still there:\n%s", ps)
	}
	if info, _ := e.m.Get("midrun"); info.Error != "" {
		t.Errorf("a run after the lost one should clear the note: %q", info.Error)
	}
}

// TestOCIConcurrentCreates makes several sandboxes at once.
func TestOCIConcurrentCreates(t *testing.T) {
	e := newOCIEnv(t, "crun")
	var wg sync.WaitGroup
	for i := range 6 {
		id := fmt.Sprintf("par%d", i)
		e.track(id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: id}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	ready := map[string]bool{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // bounds a hang only
	defer cancel()
	for len(ready) < 6 {
		ev, err := e.next(ctx)
		if err != nil {
			t.Fatalf("ready: %v, want 6: %v", ready, err)
		}
		if ev.Action == sandbox.ActionFailed {
			t.Fatalf("%s failed: %v", ev.SandboxID, ev.Attributes)
		}
		if ev.Action == sandbox.ActionReady {
			ready[ev.SandboxID] = true
		}
	}
	if n := len(e.m.List(sandbox.Filter{State: sandbox.StateReady})); n != 6 {
		t.Errorf("%d ready, want 6", n)
	}
}

// checkCloexec fails the test if a descriptor of this process past 0-2
// would survive an exec.
func checkCloexec(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range entries {
		fd, err := strconv.Atoi(ent.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			continue // the directory listing's own descriptor, closed
		}
		if flags&unix.FD_CLOEXEC == 0 {
			target, _ := os.Readlink("/proc/self/fd/" + ent.Name())
			t.Errorf("fd %d (%s) is not close-on-exec", fd, target)
		}
	}
}
