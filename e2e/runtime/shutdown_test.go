package runtime

import (
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// TestSystemShutdown is the VM's clean power-off, off a VM: an agent with
// its state on the data volume runs a sandbox and the runtime; POST
// /v1/system/shutdown answers 202, and then the agent stops the sandbox,
// dockerd and containerd, unmounts the volume (its loop device goes with
// it) and exits 0. Started again, it finds the sandbox's record on the
// volume, stopped, and the volume is still btrfs that mounts.
func TestSystemShutdown(t *testing.T) {
	e := setup(t)
	e.allowSandboxes(t)
	a := e.agent
	a.start(t, "--state-on-data-volume", "--sandbox-busybox", e.bins["busybox"])
	sdk := a.SDK(t)
	createSandbox(t, sdk, "box") // sandbox requests wait for the state dir
	state, ok := agenttest.MountAt(a.Path("state"))
	if !ok || state.FSType != "btrfs" {
		t.Fatalf("the state dir before any ensure: %+v (mounted %v), want the data volume's btrfs", state, ok)
	}
	res := a.ensure(t, true)
	if !res.Ready || !strings.Contains(res.Message, "data volume already mounted") {
		t.Errorf("ensure after startup prepared the volume: %+v, want ready, the volume found mounted", res)
	}
	kids := daemons(a)
	if len(kids) != 2 {
		t.Fatalf("the agent's daemons: %v", kids)
	}
	sandboxProcs := processesOf(a.Path("state"))
	if len(sandboxProcs) == 0 {
		t.Fatal("no process of the sandbox's under the state dir")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	grace := int32(30)
	r, err := a.Client(t).ShutdownSystemWithResponse(ctx, api.ShutdownRequest{Action: api.ShutdownRequestActionPoweroff, GraceSeconds: &grace})
	if err != nil || r.StatusCode() != http.StatusAccepted {
		t.Fatalf("shutdown: %v %v", err, r)
	}
	if err := a.Wait(2 * time.Minute); err != nil {
		t.Fatalf("the agent after the shutdown: %v, want status 0\n%s", err, a.logTail())
	}
	for name, pid := range kids {
		if alive(pid) {
			t.Errorf("%s (pid %d) outlived the shutdown", name, pid)
		}
	}
	for _, p := range sandboxProcs {
		if alive(p.pid) {
			t.Errorf("the sandbox's %s outlived the shutdown", p)
		}
	}
	if left := agenttest.MountsUnder(a.Dir); len(left) > 0 {
		t.Errorf("mounts left after the shutdown: %v", left)
	}
	if !agenttest.WaitFor(time.Minute, func() bool { return len(agenttest.LoopsBacking(a.image)) == 0 }) {
		t.Errorf("the loop device %v stayed attached after the volume was unmounted", agenttest.LoopsBacking(a.image))
	}
	if out, err := exec.Command("btrfs", "check", "--readonly", a.image).CombinedOutput(); err != nil {
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
	// stopped.
	a.start(t, "--state-on-data-volume", "--sandbox-busybox", e.bins["busybox"])
	sdk = a.SDK(t)
	info, err := client.Check(sdk.API().GetSandboxWithResponse(ctx, "box"))
	if err != nil || info.JSON200 == nil || info.JSON200.State != api.SandboxStateStopped {
		t.Errorf("the sandbox after the restart: %v %+v, want its record, stopped", err, info)
	}
	if err := a.Stop(); err != nil {
		t.Error(err)
	}
}
