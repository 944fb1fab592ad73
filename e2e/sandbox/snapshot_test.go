package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/sandbox/network"
)

// The tests of this file: the exec WebSocket, checkpoint and restore, and
// bridge networking.

// ---- exec ----

// execWS starts init over the exec WebSocket of id through the SDK,
// every message checked against the contract.
func (a *agentProc) execWS(ctx context.Context, t testing.TB, id string, init api.ExecInit) *wsRun {
	t.Helper()
	s, err := a.SDK(t).Exec(ctx, id, init)
	if err != nil {
		t.Fatalf("exec in %s: %v", id, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	w := newWSRun(t, s.Output(), init.Cmd)
	w.exec = s
	return w
}

// stdin sends s as the exec's stdin.
func (w *wsRun) stdin(s string) {
	w.t.Helper()
	if _, err := io.WriteString(w.exec, s); err != nil {
		w.t.Fatal(err)
	}
}

// readUntil reads output messages into res until done says its stdout is
// complete; an exit message before that fails the test.
func (w *wsRun) readUntil(res *runResult, done func(stdout string) bool) {
	w.t.Helper()
	for !done(string(res.Stdout)) {
		o := w.next()
		if o.Exit != nil {
			w.t.Fatalf("the exec ended (%+v) with stdout %q, stderr %q", *o.Exit, res.Stdout, res.Stderr)
		}
		res.collect(o.Stream, o.Data)
	}
}

// closeError is the close frame err carries, or a zero one.
func closeError(err error) websocket.CloseError {
	var ce websocket.CloseError
	errors.As(err, &ce)
	return ce
}

// TestExecStdin: `cat` over the exec WebSocket echoes what it is sent on
// stdin, each piece as it comes, and exits 0 once the client closes its
// stdin; the socket then closes normally and the sandbox is ready again
// (events running, idle with exit code 0). A first message other than
// init closes the socket with 4400.
func TestExecStdin(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("exec-cat")})
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	w := a.execWS(ctx, t, id, api.ExecInit{Cmd: []string{"cat"}})
	var res runResult
	w.stdin("hello\n")
	w.readUntil(&res, func(out string) bool { return len(out) >= len("hello\n") })
	if string(res.Stdout) != "hello\n" {
		t.Errorf("cat echoed %q, want hello", res.Stdout)
	}
	evs.expect(id, "running")
	if info := a.get(t, id); info.State != "running" {
		t.Errorf("state %s while the exec runs, want running", info.State)
	}
	w.stdin("world, without a newline")
	if err := w.exec.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	rest := w.finish(ctx)
	if got := string(res.Stdout) + string(rest.Stdout); got != "hello\nworld, without a newline" || len(rest.Stderr) != 0 || rest.Code != 0 {
		t.Errorf("cat: stdout %q, stderr %q, exit %d; want all its input, nothing, 0", got, rest.Stderr, rest.Code)
	}
	if idle := evs.expect(id, "idle")[0]; attrs(idle)["exit_code"] != "0" {
		t.Errorf("idle %v, want exit_code 0", attrs(idle))
	}
	if info := a.get(t, id); info.State != "ready" || info.LastExitCode == nil || *info.LastExitCode != 0 {
		t.Errorf("after the exec: %+v; want ready, last exit 0", info)
	}

	c, resp, err := a.dialWS(ctx, "/v1/sandboxes/"+id+"/exec")
	if err != nil {
		t.Fatalf("exec WebSocket: %v (%s)", err, statusOf(resp))
	}
	defer func() { _ = c.CloseNow() }()
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"stdin":"aGkK"}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != 4400 || !strings.Contains(closeError(err).Reason, "init") {
		t.Errorf("stdin as the first message: %v, want a close with 4400 naming init", err)
	}
	if info := a.get(t, id); info.State != "ready" {
		t.Errorf("after a refused exec: %s, want ready", info.State)
	}
	a.remove(t, id, false)
}

// sizeLine is a line of `stty size`.
var sizeLine = regexp.MustCompile(`(?m)^(\d+) (\d+)\r?$`)

// TestExecTerminal: an exec with a terminal, on whichever runtime the agent
// picked (the sandbox's init starts the process, so runc works too):
// `stty size` prints the init's tty_size, and after a resize message the
// new size; the exit code ends the stream.
func TestExecTerminal(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("exec-tty")})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	// Each line of input prints the terminal's size again; q ends it.
	script := `stty size; while read -r line; do [ "$line" = q ] && exit 3; stty size; done`
	init := api.ExecInit{Cmd: []string{"sh", "-c", script}, Tty: agenttest.Ptr(true), TtySize: &api.TTYSize{Width: 80, Height: 24}}
	t.Logf("OCI runtime: %s", a.runtime)

	w := a.execWS(ctx, t, id, init)
	var res runResult
	sizes := func(out string) []string {
		var got []string
		for _, m := range sizeLine.FindAllStringSubmatch(out, -1) {
			got = append(got, m[1]+" "+m[2])
		}
		return got
	}
	w.readUntil(&res, func(out string) bool { return len(sizes(out)) >= 1 })
	if got := sizes(string(res.Stdout)); got[0] != "24 80" {
		t.Errorf("stty size printed %q on a terminal of 80x24, want 24 80 (stdout %q)", got[0], res.Stdout)
	}
	if err := w.exec.Resize(100, 30); err != nil {
		t.Fatal(err)
	}
	// The resize reaches the terminal apart from stdin: ask again, a
	// line at a time, until the new size shows (or the deadline).
	for asked := 1; ; asked++ {
		w.stdin("\n")
		w.readUntil(&res, func(out string) bool { return len(sizes(out)) > asked })
		got := sizes(string(res.Stdout))
		last := got[len(got)-1]
		if last == "30 100" {
			break
		}
		if last != "24 80" {
			t.Fatalf("stty size printed %q after a resize from 80x24 to 100x30 (stdout %q)", last, res.Stdout)
		}
	}
	w.stdin("q\n")
	rest := w.finish(ctx)
	if rest.Code != 3 {
		t.Errorf("exit %d, want 3 (stdout %q)", rest.Code, append(res.Stdout, rest.Stdout...))
	}
	if len(res.Stderr)+len(rest.Stderr) != 0 {
		t.Errorf("stderr %q on a terminal, want everything on stdout", append(res.Stderr, rest.Stderr...))
	}
	a.remove(t, id, false)
}

// ---- snapshots ----

// checkpoint checkpoints a sandbox, requiring a 201 and a snapshot
// directory under the agent's state directory, and registers a cleanup
// that deletes the snapshot if the test did not.
func (a *agentProc) checkpoint(t testing.TB, id string, req api.CheckpointRequest) api.CheckpointResponse {
	t.Helper()
	r, err := a.Client(t).CheckpointSandboxWithResponse(reqCtx(t), id, req)
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON201 == nil {
		t.Fatalf("checkpoint %s: %d %s, want 201", id, r.StatusCode(), r.Body)
	}
	snap := *r.JSON201
	a.cleanupSnapshot(t, snap.SnapshotId, snap.SnapshotDir)
	if snap.SnapshotId == "" || snap.CreatedAt == 0 {
		t.Errorf("checkpoint %s answered %s, want an id and a time", id, r.Body)
	}
	if !strings.HasPrefix(snap.SnapshotDir, a.stateDir+"/") {
		t.Errorf("snapshot_dir %q is not under the state directory %s", snap.SnapshotDir, a.stateDir)
	}
	if st, err := os.Stat(snap.SnapshotDir); err != nil || !st.IsDir() {
		t.Errorf("snapshot_dir %s: %v, want a directory", snap.SnapshotDir, err)
	}
	return snap
}

// cleanupSnapshot deletes snapshot id at the end of t if it is still
// listed, and checks that its directory is gone either way.
func (a *agentProc) cleanupSnapshot(t testing.TB, id, dir string) {
	t.Cleanup(func() {
		if slices.ContainsFunc(a.snapshots(t, api.ListSnapshotsParams{}), func(s api.Snapshot) bool { return s.Id == id }) {
			if !t.Failed() {
				t.Errorf("the test left snapshot %s", id)
			}
			a.deleteSnapshot(t, id, dir)
			return
		}
		if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("snapshot %s: %s is still there (%v)", id, dir, err)
		}
	})
}

// snapshots lists the snapshots that match.
func (a *agentProc) snapshots(t testing.TB, params api.ListSnapshotsParams) []api.Snapshot {
	t.Helper()
	r, err := a.Client(t).ListSnapshotsWithResponse(reqCtx(t), &params)
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON200 == nil {
		t.Fatalf("GET /v1/snapshots: %d %s", r.StatusCode(), r.Body)
	}
	return r.JSON200.Snapshots
}

// snapshotIDs lists the ids of the snapshots that match, sorted.
func (a *agentProc) snapshotIDs(t testing.TB, params api.ListSnapshotsParams) []string {
	t.Helper()
	var ids []string
	for _, s := range a.snapshots(t, params) {
		ids = append(ids, s.Id)
	}
	slices.Sort(ids)
	return ids
}

// deleteSnapshot deletes a snapshot (204) and checks that its directory
// is gone.
func (a *agentProc) deleteSnapshot(t testing.TB, id, dir string) {
	t.Helper()
	r, err := a.Client(t).DeleteSnapshotWithResponse(reqCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusCode() != http.StatusNoContent {
		t.Fatalf("DELETE snapshot %s: %d %s, want 204", id, r.StatusCode(), r.Body)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("snapshot %s deleted, but %s is still there (%v)", id, dir, err)
	}
}

// restore restores a snapshot, requiring a 201 naming the new sandbox, and
// registers the cleanup of create for it.
func (a *agentProc) restore(t testing.TB, snap string, req api.RestoreRequest) api.RestoreResponse {
	t.Helper()
	r, err := a.Client(t).RestoreSnapshotWithResponse(reqCtx(t), snap, req)
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON201 == nil {
		t.Fatalf("restore %s: %d %s, want 201", snap, r.StatusCode(), r.Body)
	}
	a.cleanupSandbox(t, r.JSON201.Id)
	if req.Id != nil && r.JSON201.Id != *req.Id {
		t.Errorf("restore %s as %s answered %s", snap, *req.Id, r.Body)
	}
	return *r.JSON201
}

// runLong starts a command that prints "started" and then sleeps, and
// returns once it has printed. cancel ends it (the client goes away:
// exit 137) and waits for it; the end of t does too, if the test did not.
func (a *agentProc) runLong(t *testing.T, id string) (cancel func()) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	started := make(chan struct{})
	done := make(chan struct{})
	var res runResult
	go func() {
		defer close(done)
		first := true
		res = a.runNDJSON(ctx, t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo started; exec sleep 1003"}},
			func(_ string, data []byte) {
				if first && string(data) == "started\n" {
					first = false
					close(started)
				}
			})
	}()
	end := func() { stop(); <-done }
	t.Cleanup(end)
	select {
	case <-started:
	case <-done:
		t.Fatalf("the long run ended: %+v", res)
	case <-time.After(waitTimeout):
		t.Fatal("the long run never printed")
	}
	return func() {
		t.Helper()
		end()
		if !res.Cut {
			t.Errorf("the cancelled run: %+v, want a stream cut short", res)
		}
	}
}

// TestCheckpointRestore: a checkpoint captures a ready sandbox's files (a
// new file, a changed one, a deleted one) and its request; a sandbox
// restored from it is ready at once, has those files and the original's
// env, and is independent of the original (each keeps its own later
// writes). Snapshots are listed by sandbox and by labels; checkpoints of
// a running or stopped sandbox are 409, of an unknown one 404; restores
// of an unknown snapshot 404, onto an id that is taken 409, and the same
// restore again answers the sandbox made the first time. A deleted
// snapshot (204) leaves nothing on disk, cannot be restored or deleted
// again (404), and the sandboxes restored from it work on.
func TestCheckpointRestore(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	c := a.Client(t)
	const id, other = "ckpt", "ckpt-other"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id), Labels: &map[string]string{"suite": "ckpt"}, Env: &map[string]string{"FROM_CREATE": "kept"}})
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(other)})
	a.sh(t, id, "echo before > /tmp/state; echo changed > /etc/motd; rm /etc/group")

	snap := a.checkpoint(t, id, api.CheckpointRequest{Name: agenttest.Ptr("first"), Labels: &map[string]string{"suite": "ckpt-snap", "tier": "a"}})
	otherSnap := a.checkpoint(t, other, api.CheckpointRequest{Labels: &map[string]string{"suite": "ckpt-snap", "tier": "b"}})
	if snap.SnapshotId == otherSnap.SnapshotId || snap.SnapshotDir == otherSnap.SnapshotDir {
		t.Errorf("two checkpoints share an id or directory: %+v, %+v", snap, otherSnap)
	}
	if info := a.get(t, id); info.State != "ready" {
		t.Errorf("after the checkpoint: %s, want ready", info.State)
	}
	a.sh(t, id, "echo after > /tmp/state")

	// Listing.
	listed := a.snapshots(t, api.ListSnapshotsParams{SandboxId: agenttest.Ptr(id)})
	if len(listed) != 1 {
		t.Fatalf("snapshots of %s: %+v, want one", id, listed)
	}
	if s := listed[0]; s.Id != snap.SnapshotId || s.SandboxId != id || s.Name == nil || *s.Name != "first" ||
		s.Labels == nil || (*s.Labels)["tier"] != "a" || s.SnapshotDir != snap.SnapshotDir || s.CreatedAt != snap.CreatedAt {
		t.Errorf("listed %+v; the checkpoint answered %+v", s, snap)
	}
	check := func(params api.ListSnapshotsParams, want ...string) {
		t.Helper()
		slices.Sort(want)
		if got := a.snapshotIDs(t, params); !slices.Equal(got, want) {
			t.Errorf("snapshots with sandbox_id %v, labels %v: %v, want %v", agenttest.Deref(params.SandboxId), agenttest.Deref(params.Label), got, want)
		}
	}
	check(api.ListSnapshotsParams{SandboxId: agenttest.Ptr(other)}, otherSnap.SnapshotId)
	check(api.ListSnapshotsParams{SandboxId: agenttest.Ptr("no-such-sandbox")})
	check(api.ListSnapshotsParams{Label: &[]string{"suite=ckpt-snap"}}, snap.SnapshotId, otherSnap.SnapshotId)
	check(api.ListSnapshotsParams{Label: &[]string{"suite=ckpt-snap", "tier=b"}}, otherSnap.SnapshotId)
	check(api.ListSnapshotsParams{Label: &[]string{"tier=a"}, SandboxId: agenttest.Ptr(id)}, snap.SnapshotId)
	check(api.ListSnapshotsParams{Label: &[]string{"tier=b"}, SandboxId: agenttest.Ptr(id)})
	check(api.ListSnapshotsParams{Label: &[]string{"suite=ckpt"}}) // the sandbox's labels are not the snapshot's

	// Restore.
	restored := a.restore(t, snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr("restored-1"), Labels: &map[string]string{"suite": "ckpt", "restored": "yes"}})
	if restored.IpAddress != nil {
		t.Errorf("restored a sandbox without network: ip_address %q", *restored.IpAddress)
	}
	info := a.get(t, restored.Id) // no wait: ready when the restore answers
	if info.State != "ready" || info.ReadyAt == nil || info.Labels == nil || (*info.Labels)["restored"] != "yes" {
		t.Errorf("the restored sandbox at once: %+v; want ready, with the restore's labels", info)
	}
	const files = `cat /tmp/state /etc/motd; echo "$FROM_CREATE"; [ -e /etc/group ] && echo group is back; true`
	if out := a.sh(t, restored.Id, files); out != "before\nchanged\nkept\n" {
		t.Errorf("the restored sandbox has %q, want the files at the checkpoint (before, changed, no /etc/group) and the env", out)
	}
	if out := a.sh(t, id, "cat /tmp/state"); out != "after\n" {
		t.Errorf("the original has %q after the restore, want its own later write", out)
	}
	a.sh(t, restored.Id, "echo restored > /tmp/state")
	if out := a.sh(t, id, "cat /tmp/state"); out != "after\n" {
		t.Errorf("the original has %q after a write in the restored sandbox, want its own", out)
	}
	if ids := a.list(t, api.ListSandboxesParams{Label: &[]string{"restored=yes"}}); !slices.Equal(ids, []string{restored.Id}) {
		t.Errorf("sandboxes labelled restored=yes: %v", ids)
	}
	// The same restore again is the same sandbox, not a new one.
	if r, err := c.RestoreSnapshotWithResponse(reqCtx(t), snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr("restored-1"), Labels: &map[string]string{"suite": "ckpt", "restored": "yes"}}); err != nil {
		t.Fatal(err)
	} else if r.JSON201 == nil || r.JSON201.Id != restored.Id {
		t.Errorf("the same restore again: %d %s; want 201 with the same sandbox", r.StatusCode(), r.Body)
	}
	if out := a.sh(t, restored.Id, "cat /tmp/state"); out != "restored\n" {
		t.Errorf("after the same restore again: %q, want the sandbox's own write (it was remade?)", out)
	}
	for _, taken := range []string{id, other} {
		if r, err := c.RestoreSnapshotWithResponse(reqCtx(t), snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr(taken)}); err != nil {
			t.Fatal(err)
		} else if r.JSON409 == nil {
			t.Errorf("restore onto the id of sandbox %s: %d %s; want 409", taken, r.StatusCode(), r.Body)
		}
	}
	if out := a.sh(t, id, "cat /tmp/state"); out != "after\n" {
		t.Errorf("the original has %q after a refused restore onto its id", out)
	}

	// Wrong state, unknown objects.
	stopRun := a.runLong(t, id)
	if r, err := c.CheckpointSandboxWithResponse(reqCtx(t), id, api.CheckpointRequest{}); err != nil {
		t.Fatal(err)
	} else if r.JSON409 == nil {
		t.Errorf("checkpoint of a running sandbox: %d %s; want 409", r.StatusCode(), r.Body)
	}
	stopRun()
	if r, err := c.StopSandboxWithResponse(reqCtx(t), other, api.StopSandboxRequest{}); err != nil {
		t.Fatal(err)
	} else if r.JSON200 == nil || r.JSON200.State != "stopped" {
		t.Fatalf("stop %s: %d %s", other, r.StatusCode(), r.Body)
	}
	if r, err := c.CheckpointSandboxWithResponse(reqCtx(t), other, api.CheckpointRequest{}); err != nil {
		t.Fatal(err)
	} else if r.JSON409 == nil {
		t.Errorf("checkpoint of a stopped sandbox: %d %s; want 409", r.StatusCode(), r.Body)
	}
	if r, err := c.CheckpointSandboxWithResponse(reqCtx(t), "no-such-sandbox", api.CheckpointRequest{}); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("checkpoint of an unknown sandbox: %d %s; want 404", r.StatusCode(), r.Body)
	}
	if r, err := c.RestoreSnapshotWithResponse(reqCtx(t), "snap-no-such-snapshot", api.RestoreRequest{Id: agenttest.Ptr("restored-never")}); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("restore of an unknown snapshot: %d %s; want 404", r.StatusCode(), r.Body)
	}
	check(api.ListSnapshotsParams{SandboxId: agenttest.Ptr(id)}, snap.SnapshotId) // the refusals made none

	// Delete.
	a.deleteSnapshot(t, snap.SnapshotId, snap.SnapshotDir)
	check(api.ListSnapshotsParams{Label: &[]string{"suite=ckpt-snap"}}, otherSnap.SnapshotId)
	if r, err := c.DeleteSnapshotWithResponse(reqCtx(t), snap.SnapshotId); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("delete a deleted snapshot: %d %s; want 404", r.StatusCode(), r.Body)
	}
	if r, err := c.RestoreSnapshotWithResponse(reqCtx(t), snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr("restored-never")}); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("restore of a deleted snapshot: %d %s; want 404", r.StatusCode(), r.Body)
	}
	if out := a.sh(t, restored.Id, "cat /tmp/state /etc/motd"); out != "restored\nchanged\n" {
		t.Errorf("the restored sandbox after its snapshot was deleted: %q", out)
	}
	a.deleteSnapshot(t, otherSnap.SnapshotId, otherSnap.SnapshotDir)
	for _, box := range []string{restored.Id, id, other} {
		a.remove(t, box, false)
	}
	if ids := a.list(t, api.ListSandboxesParams{}); slices.Contains(ids, "restored-never") {
		t.Errorf("a refused restore left a sandbox: %v", ids)
	}
}

// TestSnapshotBadInput: what the snapshot endpoints refuse with 400.
func TestSnapshotBadInput(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	raw := a.RawClient(t)
	ctx := reqCtx(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("snap-bad")})
	for _, tc := range []struct{ body, field string }{
		{`{"colour":"blue"}`, "colour"},
		{`{"labels":{"":"x"}}`, "labels"},
		{`{"name":"` + strings.Repeat("n", 300) + `"}`, "name"},
	} {
		r, err := raw.CheckpointSandboxWithBodyWithResponse(ctx, id, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if r.JSON400 == nil || !strings.Contains(r.JSON400.Message, tc.field) {
			t.Errorf("checkpoint %.60s: %d %s; want 400 naming %q", tc.body, r.StatusCode(), r.Body, tc.field)
		}
	}
	if ids := a.snapshotIDs(t, api.ListSnapshotsParams{SandboxId: agenttest.Ptr(id)}); len(ids) > 0 {
		t.Errorf("a refused checkpoint left snapshots %v", ids)
	}
	snap := a.checkpoint(t, id, api.CheckpointRequest{})
	for _, tc := range []struct{ body, field string }{
		{`{"id":"bad id!"}`, "id"},
		{`{"id":"sb-unknown","colour":"blue"}`, "colour"},
		{`{"id":"sb-ttl","ttl_seconds":-1}`, "ttl_seconds"},
		{`{"id":"sb-net","network_override":{"mode":"wormhole"}}`, "network_override.mode"},
	} {
		r, err := raw.RestoreSnapshotWithBodyWithResponse(ctx, snap.SnapshotId, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if r.JSON400 == nil || !strings.Contains(r.JSON400.Message, tc.field) {
			t.Errorf("restore %s: %d %s; want 400 naming %q", tc.body, r.StatusCode(), r.Body, tc.field)
		}
	}
	if r, err := raw.ListSnapshotsWithResponse(ctx, &api.ListSnapshotsParams{Label: &[]string{"novalue"}}); err != nil {
		t.Fatal(err)
	} else if r.JSON400 == nil {
		t.Errorf("label=novalue: %d %s; want 400", r.StatusCode(), r.Body)
	}
	if ids := a.list(t, api.ListSandboxesParams{}); slices.ContainsFunc(ids, func(id string) bool { return strings.HasPrefix(id, "sb-") }) {
		t.Errorf("a refused restore left a sandbox: %v", ids)
	}
	a.deleteSnapshot(t, snap.SnapshotId, snap.SnapshotDir)
	a.remove(t, id, false)
}

// TestSnapshotsSurviveRestart: an agent stopped and started again on the
// same state lists the snapshots the first one took, unchanged, even of a
// sandbox since removed, and restores them with their files.
func TestSnapshotsSurviveRestart(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(filepath.Join(suite.dir, "snapshot-restart")))

	const id = "snap-src"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id), Env: &map[string]string{"FROM_CREATE": "kept"}})
	a.sh(t, id, "echo checkpointed > /tmp/state")
	snap := a.checkpoint(t, id, api.CheckpointRequest{Name: agenttest.Ptr("keep"), Labels: &map[string]string{"restart": "yes"}})
	before := a.snapshots(t, api.ListSnapshotsParams{Label: &[]string{"restart=yes"}})
	a.remove(t, id, false)

	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := a.start(); err != nil {
		t.Fatal(err)
	}

	after := a.snapshots(t, api.ListSnapshotsParams{Label: &[]string{"restart=yes"}})
	if len(after) != 1 || len(before) != 1 {
		t.Fatalf("snapshots before the restart %+v, after %+v; want the one", before, after)
	}
	b, _ := json.Marshal(before[0])
	if f, _ := json.Marshal(after[0]); string(b) != string(f) {
		t.Errorf("the snapshot after the restart: %s; before: %s", f, b)
	}
	restored := a.restore(t, snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr("snap-after-restart")})
	if info := a.get(t, restored.Id); info.State != "ready" {
		t.Errorf("restored after the restart: %s, want ready", info.State)
	}
	if out := a.sh(t, restored.Id, `cat /tmp/state; echo "$FROM_CREATE"`); out != "checkpointed\nkept\n" {
		t.Errorf("restored after the restart: %q, want the checkpoint's file and env", out)
	}
	a.remove(t, restored.Id, false)
	a.deleteSnapshot(t, snap.SnapshotId, snap.SnapshotDir)
}

// ---- bridge networking ----

// defaultGateway is the gateway of the default --sandbox-cidr.
const defaultGateway = "172.20.0.1"

var defaultCIDR = netip.MustParsePrefix("172.20.0.0/16")

// createBridged creates a sandbox on the bridge, requires an address in
// the 202, waits for it to be ready and returns the address.
func (a *agentProc) createBridged(t testing.TB, id string) netip.Addr {
	t.Helper()
	evs := a.events(t, api.StreamEventsParams{Id: &id})
	r, err := a.Client(t).CreateSandboxWithResponse(reqCtx(t), api.CreateSandboxRequest{
		Id: &id, Network: &api.NetworkSpec{Mode: agenttest.Ptr[api.NetworkSpecMode]("bridge")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON202 == nil {
		t.Fatalf("create %s on the bridge: %d %s, want 202", id, r.StatusCode(), r.Body)
	}
	a.cleanupSandbox(t, id)
	if r.JSON202.Id != id || r.JSON202.State != "starting" {
		t.Errorf("create %s answered %s, want the id in state starting", id, r.Body)
	}
	addr := sandboxAddr(t, id, r.JSON202.IpAddress)
	evs.expect(id, "created")
	evs.until(id, "ready")
	return addr
}

// sandboxAddr parses a bridged sandbox's address, which must be in the
// default range and neither its network, gateway nor broadcast address.
func sandboxAddr(t testing.TB, id string, ip *string) netip.Addr {
	t.Helper()
	if ip == nil || *ip == "" {
		t.Fatalf("sandbox %s on the bridge has no ip_address", id)
	}
	addr, err := netip.ParseAddr(*ip)
	if err != nil || !defaultCIDR.Contains(addr) || *ip == defaultGateway || *ip == "172.20.0.0" || *ip == "172.20.255.255" {
		t.Fatalf("sandbox %s has ip_address %q (%v), want a host address of %s", id, *ip, err, defaultCIDR)
	}
	return addr
}

// checkBridged checks how inspect and list show a bridged sandbox.
func (a *agentProc) checkBridged(t testing.TB, id string, addr netip.Addr) {
	t.Helper()
	info := a.get(t, id)
	if n := info.Network; n == nil || agenttest.Deref(n.Mode) != "bridge" || agenttest.Deref(n.IpAddress) != addr.String() || agenttest.Deref(n.Gateway) != defaultGateway {
		t.Errorf("GET %s: network %+v; want mode bridge, ip_address %s, gateway %s", id, agenttest.Deref(info.Network), addr, defaultGateway)
	}
	r, err := a.Client(t).ListSandboxesWithResponse(reqCtx(t), &api.ListSandboxesParams{})
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON200 == nil {
		t.Fatalf("list: %d %s", r.StatusCode(), r.Body)
	}
	for _, s := range r.JSON200.Sandboxes {
		if s.Id == id && agenttest.Deref(s.IpAddress) != addr.String() {
			t.Errorf("listed %s with ip_address %q, want %s", id, agenttest.Deref(s.IpAddress), addr)
		}
	}
	if _, err := net.InterfaceByName(network.HostIfName(id)); err != nil {
		t.Errorf("the veth of %s, %s: %v", id, network.HostIfName(id), err)
	}
}

// checkUnbridged checks that nothing of a removed bridged sandbox's
// network is left: its veth is gone.
func checkUnbridged(t testing.TB, id string) {
	t.Helper()
	if ifc, err := net.InterfaceByName(network.HostIfName(id)); err == nil {
		t.Errorf("sandbox %s removed, but its veth %s is still there", id, ifc.Name)
	}
}

// serveHello runs a one-shot TCP server in sandbox id, `nc` listening on
// port 8080 and sending "hello", and reads "hello" from it at addr from
// the test (in the agent's network namespace, beside the bridge),
// dialling again until the server listens.
func (a *agentProc) serveHello(t *testing.T, id string, addr netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	finished := make(chan struct{})
	var res runResult
	go func() {
		defer close(finished)
		res = a.runNDJSON(ctx, t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo hello | nc -l -p 8080"}}, nil)
	}()
	defer func() { cancel(); <-finished }()

	target := netip.AddrPortFrom(addr, 8080).String()
	var conn net.Conn
	var lastErr error
	for attempts := 1; conn == nil; attempts++ {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := (&net.Dialer{}).DialContext(dctx, "tcp", target)
		dcancel()
		if err == nil {
			conn = c
			if attempts > 1 {
				t.Logf("%s: connected at attempt %d", target, attempts)
			}
			break
		}
		lastErr = err
		select {
		case <-finished:
			t.Fatalf("the server in %s ended before a connection to %s (%v): %+v", id, target, lastErr, res)
		case <-ctx.Done():
			t.Fatalf("no connection to %s within %s: %v", target, waitTimeout, lastErr)
		case <-time.After(10 * time.Millisecond): // the server is not listening yet: again
		}
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("hello\n"))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "hello\n" {
		t.Errorf("read %q from %s (%v), want hello", got, target, err)
	}
	conn.Close()
	<-finished
	if res.Status != http.StatusOK || res.Cut || res.Code != 0 {
		t.Errorf("the server in %s: %+v, want exit 0", id, res)
	}
}

// TestBridgeNetwork: a sandbox on the bridge gets an address of the
// default range, shown on create, inspect and list with the gateway, and
// a veth; a server in it is reachable at that address. Two sandboxes
// restored from its snapshot with network_override tap get addresses of
// their own, distinct from each other and the original's, and are
// reachable there too. Removing a bridged sandbox removes its veth and
// frees its address, which the next bridged sandbox gets; the restored
// ones work on.
//
// No other test may put sandboxes of the shared agent on the bridge: the
// address of the last check depends on which ones are held.
func TestBridgeNetwork(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)

	const id = "net-1"
	addr := a.createBridged(t, id)
	a.checkBridged(t, id, addr)
	a.serveHello(t, id, addr)

	snap := a.checkpoint(t, id, api.CheckpointRequest{})
	tap := &api.NetworkSpec{Mode: agenttest.Ptr[api.NetworkSpecMode]("tap")}
	held := map[netip.Addr]string{addr: id}
	var restored []string
	for _, rid := range []string{"net-r1", "net-r2"} {
		r := a.restore(t, snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr(rid), NetworkOverride: tap})
		raddr := sandboxAddr(t, rid, r.IpAddress)
		if other, ok := held[raddr]; ok {
			t.Errorf("restored sandbox %s got %s, the address of %s", rid, raddr, other)
		}
		held[raddr] = rid
		a.checkBridged(t, rid, raddr)
		restored = append(restored, rid)
		if rid == "net-r1" {
			a.serveHello(t, rid, raddr)
		}
	}
	a.deleteSnapshot(t, snap.SnapshotId, snap.SnapshotDir)

	a.remove(t, id, false)
	checkUnbridged(t, id)
	const next = "net-2"
	if again := a.createBridged(t, next); again != addr {
		t.Errorf("%s got %s; want %s, freed by %s (the lowest free address)", next, again, addr, id)
	} else {
		a.checkBridged(t, next, again)
		a.serveHello(t, next, again)
	}
	for _, rid := range restored {
		if out := a.sh(t, rid, "echo still here"); out != "still here\n" {
			t.Errorf("%s after %s was removed: %q", rid, id, out)
		}
	}
	for _, box := range append(restored, next) {
		a.remove(t, box, false)
		checkUnbridged(t, box)
	}
}
