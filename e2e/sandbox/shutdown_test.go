package sandbox

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// pidsIn lists the processes of a cgroup (v2, or v1's pids hierarchy).
func pidsIn(cgroup string) []int {
	var pids []int
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/pids"} {
		b, err := os.ReadFile(filepath.Join(root, cgroup, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// childrenOf lists the live processes whose parent is ppid.
func childrenOf(ppid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[0] != "Z" && fields[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}

// processAlive reports whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// TestSystemShutdown is the VM's clean power-off, off a VM: an agent with
// its state on the data volume (an image file) runs a sandbox and the
// runtime (Debian's containerd and dockerd); POST /v1/system/shutdown
// answers 202, and then the agent stops the sandbox, dockerd and
// containerd, unmounts the volume (its loop device goes with it) and exits
// 0. Started again, it finds the sandbox's record on the volume, stopped.
func TestSystemShutdown(t *testing.T) {
	requireSuite(t)
	bins := map[string]string{}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "dockerd", "runc", "mkfs.btrfs", "btrfs"} {
		bins[b] = testenv.RequireBinary(t, b)
	}
	testenv.HideDaemonState(t)
	testenv.RemoveNewDockerCgroups(t)
	dir := filepath.Join(suite.dir, "shutdown")
	img := filepath.Join(dir, "data.img")
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "dockerd", "runc"} {
		if err := os.Symlink(bins[b], filepath.Join(dir, "bin", b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 1<<30); err != nil {
		t.Fatal(err)
	}
	// Runs after the agent's own cleanup: what a failed test left.
	t.Cleanup(func() {
		if left := agenttest.UnmountUnder(dir); len(left) > 0 {
			t.Errorf("could not unmount %v", left)
		}
		if loops, errs := agenttest.ReleaseLoops(img, time.Minute); len(loops) > 0 {
			t.Errorf("loop devices %v still attached to %s: %v", loops, img, errs)
		}
	})
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: dir}, extra: []string{"--state-on-data-volume",
		"--containerd-start-timeout", "2m", "--dockerd-start-timeout", "5m"}})
	if m, ok := agenttest.MountAt(a.stateDir); !ok || m.FSType != "btrfs" {
		t.Fatalf("the state dir: %+v (mounted %v), want the data volume's btrfs", m, ok)
	}
	const id = "shutdown"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id)})
	sandboxPids := pidsIn(filepath.Join(a.cgroupParent(), id))
	if len(sandboxPids) == 0 {
		t.Fatalf("no process in the sandbox's cgroup %s", filepath.Join(a.cgroupParent(), id))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := client.Check(a.Client(t).EnsureRuntimeWithResponse(ctx, api.RuntimeEnsureRequest{}))
	if err != nil || !res.JSON200.Ready || !strings.Contains(res.JSON200.Message, "data volume already mounted") {
		t.Fatalf("ensure: %v %+v; want ready, the volume found mounted at startup", err, res)
	}
	daemons := childrenOf(a.PID())
	if len(daemons) < 2 {
		t.Fatalf("the agent's children after ensure: %v, want containerd and dockerd", daemons)
	}

	grace := int32(60)
	r, err := a.Client(t).ShutdownSystemWithResponse(ctx, api.ShutdownRequest{Action: api.ShutdownRequestActionPoweroff, GraceSeconds: &grace})
	if err != nil || r.StatusCode() != http.StatusAccepted {
		t.Fatalf("shutdown: %v %v", err, r)
	}
	if err := a.Wait(3 * time.Minute); err != nil {
		t.Fatalf("the agent after the shutdown: %v, want status 0", err)
	}
	for _, pid := range append(daemons, sandboxPids...) {
		if processAlive(pid) {
			t.Errorf("pid %d (a daemon or the sandbox's) outlived the shutdown", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if left := agenttest.MountsUnder(dir); len(left) > 0 {
		t.Errorf("mounts left after the shutdown: %v", left)
	}
	if !agenttest.WaitFor(time.Minute, func() bool { return len(agenttest.LoopsBacking(img)) == 0 }) {
		t.Errorf("the loop device %v stayed attached after the volume was unmounted", agenttest.LoopsBacking(img))
	}
	if out, err := exec.Command(bins["btrfs"], "check", "--readonly", img).CombinedOutput(); err != nil {
		t.Errorf("btrfs check of the volume after the shutdown: %v\n%s", err, out)
	}
	log, err := a.RunLog()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"msg":"shutting down","action":"poweroff"`, `"system":true`, `"msg":"data volume unmounted"`, `"msg":"stopped"`} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the agent's log lacks %s", want)
		}
	}

	// The next boot: the sandbox's record was on the volume, and says it
	// stopped. (This agent stops on SIGTERM at the end, as an upgrade
	// would, leaving the volume mounted: the cleanup unmounts it.)
	if err := a.start(); err != nil {
		t.Fatal(err)
	}
	info, err := client.Check(a.Client(t).GetSandboxWithResponse(ctx, id))
	if err != nil || info.JSON200.State != api.SandboxStateStopped {
		t.Errorf("the sandbox after the restart: %v %+v, want its record, stopped", err, info)
	}
	a.remove(t, id, false)
}
