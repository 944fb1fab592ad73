package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// The fault-injection tests: the agent killed (SIGKILL) in the middle of
// an operation and started again on the same state, a sandbox's init
// killed, the state directory full. Each checks the true outcome; its
// comment says what the agent must do for it.

// TestCrashMidCreate: the agent dies while a sandbox starts (its image's
// download is held by the registry). The restarted agent must not claim a
// sandbox that never started: it is failed with a reason saying the agent
// restarted while it was starting (or gone), it can be removed without a
// trace, and a new sandbox of the same image starts (the cut download
// left no half image in the cache).
func TestCrashMidCreate(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	reg := testregistry.New(t)
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "crash-create")}, registries: []string{reg.Host()}})
	ref := reg.Host() + "/test/crash-create:1"
	reg.Push(t, ref, busyboxImage(t, "crash-create-"+time.Now().Format(time.RFC3339Nano)))
	arrived, release := reg.Hold(t, "/blobs/")

	const id = "mid-create"
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	a.createOnly(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id), Image: agenttest.Ptr(ref)})
	evs.expect(id, "created")
	select {
	case <-arrived: // the start is in flight: its download waits on the registry
	case <-time.After(waitTimeout):
		t.Fatalf("the agent did not fetch the image within %s", waitTimeout)
	}
	if info := a.get(t, id); info.State != "starting" {
		t.Fatalf("while its image downloads: %s, want starting", info.State)
	}
	a.crashAndRestart(t)
	release()

	r, err := a.Client(t).GetSandboxWithResponse(reqCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case r.JSON404 != nil:
		t.Logf("%s: gone after the restart", id)
		a.assertGone(t, id)
	case r.JSON200 != nil:
		info := *r.JSON200
		if info.State != "failed" || !strings.Contains(agenttest.Deref(info.Error), "restart") {
			t.Errorf("a sandbox whose start the agent's crash cut: %s (%q); want failed, saying the agent restarted while it started", info.State, agenttest.Deref(info.Error))
		}
		t.Logf("%s: %s: %s", id, info.State, agenttest.Deref(info.Error))
		a.remove(t, id, false)
	default:
		t.Fatalf("GET %s after the restart: %d %s", id, r.StatusCode(), r.Body)
	}

	again := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("after-crash-create"), Image: agenttest.Ptr(ref)})
	if out := a.sh(t, again, "cat /etc/motd"); out != "baked in\n" {
		t.Errorf("a sandbox of the image after the crash reads /etc/motd %q, want the image's", out)
	}
	a.remove(t, again, false)
}

// TestCrashMidRun: the agent dies while a run runs. The restarted agent
// re-adopts the sandbox (the same init, its files) as ready, records the
// run as lost (last_exit_code -1: its exit could not be known; an error
// saying the run was lost), and has killed what was left of it; the
// sandbox runs the next command.
func TestCrashMidRun(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(filepath.Join(suite.dir, "crash-run")))
	const id = "mid-run"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id)})
	a.sh(t, id, "echo before > /tmp/mark")
	initPid := a.initPid(t, id)

	body := a.startRun(t, id, "echo started; exec sleep 1004")
	if info := a.get(t, id); info.State != "running" {
		t.Fatalf("while the run runs: %s, want running", info.State)
	}
	a.crashAndRestart(t)
	body.Close() // the stream died with the agent

	info := a.get(t, id)
	if info.State != "ready" || info.LastExitCode == nil || *info.LastExitCode != -1 || !strings.Contains(agenttest.Deref(info.Error), "lost") {
		t.Errorf("after a crash mid-run: state %s, last_exit_code %v, error %q; want ready, -1, the run lost",
			info.State, agenttest.Deref(info.LastExitCode), agenttest.Deref(info.Error))
	}
	if pid := a.initPid(t, id); pid != initPid {
		t.Errorf("the init is %d after the restart, %d before: the sandbox was remade, not re-adopted", pid, initPid)
	}
	if out := a.sh(t, id, "cat /tmp/mark; ps -o args"); !strings.HasPrefix(out, "before\n") || strings.Contains(out, "sleep 1004") {
		t.Errorf("after the restart: %q; want the file written before, and nothing left of the lost run", out)
	}
	a.remove(t, id, false)
}

// startRun posts a run of script and returns its stream once the command
// has printed its first line: the run is under way. The caller closes it.
func (a *agentProc) startRun(t *testing.T, id, script string) interface{ Close() error } {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	first := make(chan error, 1)
	go func() {
		for o, err := range a.plainSDK(t, nil).Run(ctx, id, api.RunRequest{Cmd: []string{"sh", "-c", script}}) {
			switch {
			case err != nil:
				first <- err
			case o.Exit != nil:
				first <- fmt.Errorf("the run ended: %+v", *o.Exit)
			default:
				first <- nil
				<-ctx.Done() // the caller closes the stream
			}
			return
		}
	}()
	select {
	case err := <-first:
		if err != nil {
			t.Fatalf("run %q: %v", script, err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("run %q printed nothing within %s", script, waitTimeout)
	}
	return closerFunc(func() error { cancel(); return nil })
}

// closerFunc is a func as an io.Closer.
type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// crashAndRestart kills the agent (SIGKILL) and starts it again on the
// same state; it answers at once: start waits for it to serve.
func (a *agentProc) crashAndRestart(t *testing.T) {
	t.Helper()
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := a.start(); err != nil {
		t.Fatal(err)
	}
	if r, err := a.Client(t).GetPingWithResponse(reqCtx(t)); err != nil || r.JSON200 == nil {
		t.Fatalf("ping after the restart: %v %v", err, r)
	}
}

// bigLayer fills sandbox id's writable layer with 256 MiB, so that copying
// it (a checkpoint, a restore) takes a moment.
func (a *agentProc) bigLayer(t *testing.T, id string) {
	t.Helper()
	a.sh(t, id, `mkdir /tmp/big; i=0; while [ $i -lt 64 ]; do dd if=/dev/zero of=/tmp/big/f$i bs=1048576 count=4 2>/dev/null || exit 1; i=$((i+1)); done; echo kept > /tmp/mark`)
}

// TestCrashMidCheckpoint: the agent dies while it checkpoints a sandbox
// with 256 MiB in its layer, at the moment the sandbox is frozen for the
// copy. The restarted agent must thaw the sandbox's cgroup (or fail the
// sandbox for that reason, never blame its init), keep it ready with its
// files, and list no half snapshot: the cut checkpoint's files are
// cleared. Today it finds the container "paused", kills its init and
// reports "init exited while the agent was down", leaving the cgroup
// frozen.
func TestCrashMidCheckpoint(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(filepath.Join(suite.dir, "crash-checkpoint")))
	const id = "mid-ckpt"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id)})
	a.bigLayer(t, id)
	freeze := freezeFile(t, a.initPid(t, id))

	done := make(chan string, 1)
	go func() {
		r, err := a.plainClient(t).CheckpointSandboxWithResponse(context.Background(), id, api.CheckpointRequest{Name: agenttest.Ptr("cut")})
		if err != nil {
			done <- err.Error()
			return
		}
		done <- r.Status() + " " + string(r.Body)
	}()
	// FROZEN, not FREEZING: the runtime's pause is done, so none of it
	// outlives the agent.
	if !waitFor(done, func() bool { return readFreeze(freeze) == "FROZEN" || readFreeze(freeze) == "1" }) {
		t.Fatalf("the test never saw the sandbox frozen by the checkpoint (%s); a state dir that clones the layer at once gives no time to", answered(done))
	}
	a.crashAndRestart(t)
	t.Logf("the checkpoint request: %s", <-done)

	if isFrozen(freeze) {
		t.Errorf("%s is still frozen after the restart", freeze)
		thaw(t, freeze) // so that the rest of the test and its cleanup can go on
	}
	info := a.get(t, id)
	t.Logf("%s after the restart: %s %q", id, info.State, agenttest.Deref(info.Error))
	switch info.State {
	case "ready":
		if out := a.sh(t, id, "cat /tmp/mark"); out != "kept\n" {
			t.Errorf("after the restart the sandbox reads %q, want its file", out)
		}
	case "failed":
		why := agenttest.Deref(info.Error)
		if !strings.Contains(why, "checkpoint") && !strings.Contains(why, "frozen") || strings.Contains(why, "init exited") {
			t.Errorf("failed after a crash mid-checkpoint with %q; want ready, or a reason naming the cut checkpoint", why)
		}
	default:
		t.Errorf("after a crash mid-checkpoint: %s (%q), want ready", info.State, agenttest.Deref(info.Error))
	}
	if snaps := a.snapshots(t, api.ListSnapshotsParams{}); len(snaps) > 0 {
		t.Errorf("after a crash mid-checkpoint the agent lists %+v, want no snapshot", snaps)
	}
	if left, _ := os.ReadDir(filepath.Join(a.stateDir, "snapshots")); len(left) > 0 {
		t.Errorf("the cut checkpoint's files are left: %v", names(left))
	}
	a.remove(t, id, true)
}

// TestCrashMidRestore: the agent dies while it restores a 256 MiB snapshot
// (copying its files into the new sandbox). The restarted agent lists no
// half sandbox: the new one is gone, or failed with the reason. The
// snapshot is intact: the same restore again makes a ready sandbox with
// the snapshot's files.
func TestCrashMidRestore(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(filepath.Join(suite.dir, "crash-restore")))
	const src, id = "restore-src", "mid-restore"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(src)})
	a.bigLayer(t, src)
	snap := a.checkpoint(t, src, api.CheckpointRequest{Name: agenttest.Ptr("whole")})
	a.remove(t, src, false)
	before := a.snapshots(t, api.ListSnapshotsParams{})

	done := make(chan string, 1)
	go func() {
		r, err := a.plainClient(t).RestoreSnapshotWithResponse(context.Background(), snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr(id)})
		if err != nil {
			done <- err.Error()
			return
		}
		done <- r.Status() + " " + string(r.Body)
	}()
	layer := filepath.Join(a.stateDir, "sandboxes", id, "layer")
	if !waitFor(done, func() bool { _, err := os.Stat(layer); return err == nil }) {
		t.Fatalf("the test never saw the restore copying the snapshot (%s); a state dir that clones the layer at once gives no time to", answered(done))
	}
	a.crashAndRestart(t)
	t.Logf("the restore request: %s", <-done)

	r, err := a.Client(t).GetSandboxWithResponse(reqCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case r.JSON404 != nil:
		a.assertGone(t, id)
	case r.JSON200 != nil && r.JSON200.State == "failed" && agenttest.Deref(r.JSON200.Error) != "":
		t.Logf("%s after the restart: failed: %s", id, agenttest.Deref(r.JSON200.Error))
		a.remove(t, id, false)
	default:
		t.Fatalf("a sandbox whose restore the crash cut: %d %s; want none, or failed with the reason", r.StatusCode(), r.Body)
	}
	after := a.snapshots(t, api.ListSnapshotsParams{})
	b, _ := json.Marshal(before)
	if f, _ := json.Marshal(after); string(b) != string(f) {
		t.Errorf("snapshots after the crash: %s; before: %s", f, b)
	}
	restored := a.restore(t, snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr(id)})
	if info := a.get(t, restored.Id); info.State != "ready" {
		t.Errorf("restored again after the crash: %s, want ready", info.State)
	}
	if out := a.sh(t, restored.Id, "cat /tmp/mark; ls /tmp/big | wc -l"); out != "kept\n64\n" {
		t.Errorf("restored again after the crash: %q, want the snapshot's files", out)
	}
	a.remove(t, restored.Id, false)
	a.deleteSnapshot(t, snap.SnapshotId, snap.SnapshotDir)
}

// waitFor polls cond (every millisecond: the moments it waits for may be
// short) until it holds, and reports false if the request whose answer
// done carries answered first.
func waitFor(done chan string, cond func() bool) bool {
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		select {
		case answer := <-done:
			done <- answer // for the caller to log
			return false
		default:
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// answered is the answer done carries, if it came.
func answered(done chan string) string {
	select {
	case answer := <-done:
		return "it answered " + answer
	default:
		return "no answer yet"
	}
}

// freezeFile is the file that says whether process pid's cgroup is
// frozen: the v1 freezer's freezer.state, else cgroup v2's cgroup.freeze.
func freezeFile(t testing.TB, pid int) string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	v2 := ""
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if slices.Contains(strings.Split(parts[1], ","), "freezer") {
			return filepath.Join("/sys/fs/cgroup/freezer", parts[2], "freezer.state")
		}
		if parts[0] == "0" && parts[1] == "" {
			root := "/sys/fs/cgroup"
			if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
				root = "/sys/fs/cgroup/unified" // hybrid
			}
			v2 = filepath.Join(root, parts[2], "cgroup.freeze")
		}
	}
	if v2 == "" {
		t.Fatalf("process %d has no freezer cgroup: %s", pid, data)
	}
	return v2
}

// readFreeze reads a freezeFile; "" when the cgroup is gone.
func readFreeze(file string) string {
	data, _ := os.ReadFile(file)
	return strings.TrimSpace(string(data))
}

// isFrozen reports whether a freezeFile says frozen, or on its way there.
func isFrozen(file string) bool {
	switch readFreeze(file) {
	case "FROZEN", "FREEZING", "1":
		return true
	}
	return false
}

// thaw thaws the cgroup of a freezeFile.
func thaw(t testing.TB, file string) {
	t.Helper()
	state := "THAWED"
	if filepath.Base(file) == "cgroup.freeze" {
		state = "0"
	}
	if err := os.WriteFile(file, []byte(state), 0o644); err != nil {
		t.Errorf("thaw %s: %v", file, err)
	}
}

func names(entries []fs.DirEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// TestSandboxInitKilled: a sandbox's init killed with SIGKILL from
// outside. The sandbox goes failed with a reason that names its init's
// exit, the event failed says so, and remove leaves nothing of it.
func TestSandboxInitKilled(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("init-killed")})
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	if err := syscallKill(a.initPid(t, id)); err != nil {
		t.Fatal(err)
	}
	var failed api.Event
	for failed.Action != "failed" {
		failed = evs.next()
		if failed.SandboxId != id {
			t.Fatalf("event %s, want %s's", describe([]api.Event{failed}), id)
		}
	}
	why := attrs(failed)["error"]
	if !strings.Contains(why, "init") || !strings.Contains(why, "exit") && !strings.Contains(why, "kill") {
		t.Errorf("the failed event says %q; want the init's exit named", why)
	}
	if info := a.get(t, id); info.State != "failed" || agenttest.Deref(info.Error) != why {
		t.Errorf("after its init was killed: %s (%q); want failed, with the event's reason", info.State, agenttest.Deref(info.Error))
	}
	a.remove(t, id, false)
}
