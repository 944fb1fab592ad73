package sandbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// TestLifecycle: a sandbox's whole life through the API. Its events
// (created, ready, running, idle with the exit code, stopping, stopped,
// removed) arrive in order on both forms of the event stream; `echo`
// gives its output and 0, a shell writing to stderr and exiting 3 gives
// that; inspect shows the last exit; creating again is idempotent (200)
// and a different request under the same id is 409; stop and remove leave
// nothing behind.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	const id = "life"
	ndjson := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	ws := a.eventsWS(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	req := api.CreateSandboxRequest{Id: agenttest.Ptr(id), Labels: &map[string]string{"suite": "life"}}
	a.createOnly(t, req)
	for _, evs := range []*eventStream{ndjson, ws} {
		evs.expect(id, "created", "ready")
	}
	info := a.get(t, id)
	if info.State != "ready" || info.ReadyAt == nil || info.CreatedAt <= 0 || info.LastExitCode != nil {
		t.Errorf("a new sandbox: %+v; want ready, with ready_at and no last exit", info)
	}
	if info.Limits == nil || info.Limits.Vcpus == nil || *info.Limits.Vcpus != 1 || info.Limits.MemoryMib == nil || *info.Limits.MemoryMib != 512 {
		t.Errorf("limits %+v, want the defaults 1 vCPU and 512 MiB", info.Limits)
	}

	res := a.run(t, id, api.RunRequest{Cmd: []string{"echo", "hello", "world"}})
	if string(res.Stdout) != "hello world\n" || len(res.Stderr) != 0 || res.Code != 0 {
		t.Errorf("echo: stdout %q, stderr %q, exit %d; want hello world, nothing, 0", res.Stdout, res.Stderr, res.Code)
	}
	res = a.run(t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo x >&2; exit 3"}})
	if len(res.Stdout) != 0 || string(res.Stderr) != "x\n" || res.Code != 3 {
		t.Errorf("sh: stdout %q, stderr %q, exit %d; want nothing, x, 3", res.Stdout, res.Stderr, res.Code)
	}
	for _, evs := range []*eventStream{ndjson, ws} {
		got := evs.expect(id, "running", "idle", "running", "idle")
		if attrs(got[1])["exit_code"] != "0" || attrs(got[3])["exit_code"] != "3" {
			t.Errorf("idle events %s, want exit codes 0 then 3", describe(got))
		}
	}
	info = a.get(t, id)
	if info.State != "ready" || info.LastExitCode == nil || *info.LastExitCode != 3 || info.LastExitedAt == nil {
		t.Errorf("after the runs: %+v; want ready, last exit 3", info)
	}

	c := a.Client(t)
	again, err := c.CreateSandboxWithResponse(reqCtx(t), req)
	if err != nil {
		t.Fatal(err)
	} else if again.JSON200 == nil || again.JSON200.Id != id || again.JSON200.State != "ready" {
		t.Errorf("the same create again: %d %s; want 200 with the ready sandbox", again.StatusCode(), again.Body)
	}
	other := req
	other.Labels = &map[string]string{"suite": "other"}
	if r, err := c.CreateSandboxWithResponse(reqCtx(t), other); err != nil {
		t.Fatal(err)
	} else if r.JSON409 == nil {
		t.Errorf("another create under the same id: %d %s; want 409", r.StatusCode(), r.Body)
	}

	stop, err := c.StopSandboxWithResponse(reqCtx(t), id, api.StopSandboxRequest{TimeoutSeconds: agenttest.Ptr[int64](5)})
	if err != nil {
		t.Fatal(err)
	} else if stop.JSON200 == nil || stop.JSON200.State != "stopped" {
		t.Fatalf("stop: %d %s; want 200 stopped", stop.StatusCode(), stop.Body)
	}
	for _, evs := range []*eventStream{ndjson, ws} {
		evs.expect(id, "stopping", "stopped")
	}
	a.remove(t, id, false)
	for _, evs := range []*eventStream{ndjson, ws} {
		evs.expect(id, "removed")
	}
	if r, err := c.GetSandboxWithResponse(reqCtx(t), id); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("GET after remove: %d, want 404", r.StatusCode())
	}
}

// psArgs lists the command lines of the processes in a sandbox.
func psArgs(t *testing.T, a *agentProc, id string) string {
	t.Helper()
	return a.sh(t, id, "ps -o args")
}

// TestConcurrentRunAndClientGone: while a run runs, a second run runs too
// (over NDJSON and over the WebSocket), but a remove without force is 409.
// The first run's client going away hangs its command up: SIGHUP ends it
// (129), the sandbox is ready again, and nothing of the command is left
// in it.
func TestConcurrentRunAndClientGone(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("busy")})
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})

	ctx, cancel := context.WithCancel(reqCtx(t))
	defer cancel()
	started := make(chan struct{})
	done := make(chan runResult, 1)
	go func() {
		first := true
		done <- a.runNDJSON(ctx, t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo started; exec sleep 1000"}},
			func(_ string, data []byte) {
				if first && bytes.Equal(data, []byte("started\n")) {
					first = false
					close(started)
				}
			})
	}()
	select {
	case <-started:
	case res := <-done:
		t.Fatalf("the long run ended: %+v", res)
	case <-time.After(waitTimeout):
		t.Fatal("the long run never printed")
	}
	evs.expect(id, "running")
	if info := a.get(t, id); info.State != "running" {
		t.Errorf("state %s while a run runs, want running", info.State)
	}

	if res := a.run(t, id, api.RunRequest{Cmd: []string{"echo", "second"}}); res.Code != 0 || string(res.Stdout) != "second\n" {
		t.Errorf("a second run: exit %d, %q; want 0, second", res.Code, res.Stdout)
	}
	if w, e := a.runWS(reqCtx(t), t, id, api.RunRequest{Cmd: []string{"echo", "third"}}); w == nil {
		t.Errorf("a second run over the WebSocket: %v", refusal(e))
	} else if res := w.finish(reqCtx(t)); res.Code != 0 || string(res.Stdout) != "third\n" {
		t.Errorf("a second run over the WebSocket: exit %d, %q; want 0, third", res.Code, res.Stdout)
	}
	if info := a.get(t, id); info.State != "running" {
		t.Errorf("state %s while the first run still runs, want running", info.State)
	}
	if r, err := a.Client(t).RemoveSandboxWithResponse(reqCtx(t), id, &api.RemoveSandboxParams{}); err != nil {
		t.Fatal(err)
	} else if r.JSON409 == nil {
		t.Errorf("remove while running, without force: %d %s; want 409", r.StatusCode(), r.Body)
	}

	cancel() // the client goes away
	if res := <-done; !res.Cut {
		t.Errorf("the cancelled run: %+v, want a stream cut short", res)
	}
	idle, _ := evs.until(id, "idle")
	if attrs(idle)["exit_code"] != "129" {
		t.Errorf("idle after the client went away: %v, want exit_code 129 (SIGHUP)", attrs(idle))
	}
	info := a.get(t, id)
	if info.State != "ready" || info.LastExitCode == nil || *info.LastExitCode != 129 {
		t.Errorf("after the client went away: %+v; want ready, last exit 129", info)
	}
	if ps := psArgs(t, a, id); strings.Contains(ps, "sleep 1000") {
		t.Errorf("the command outlived its client:\n%s", ps)
	}
	a.remove(t, id, false)
}

// TestCreateCmdIsARun: the create request's cmd is a detached run, listed
// with the sandbox's runs, its output kept and its exit known.
func TestCreateCmdIsARun(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	const id = "create-cmd"
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id), Cmd: &[]string{"sh", "-c", "echo from-create; exit 4"}})
	started, _ := evs.until(id, "run.started")
	list, err := a.Client(t).ListRunsWithResponse(reqCtx(t), id)
	if err != nil || list.JSON200 == nil || len(list.JSON200.Runs) != 1 || !list.JSON200.Runs[0].Detached ||
		list.JSON200.Runs[0].RunId != attrs(started)["run_id"] {
		t.Fatalf("runs: %v %s; want the create cmd's (%v), detached", err, list.Body, attrs(started))
	}
	out := a.readRunOutput(reqCtx(t), t, id, list.JSON200.Runs[0].RunId, 0, true, 0)
	if string(out.data) != "from-create\n" || out.exit == nil || out.exit.Code != 4 {
		t.Errorf("the create cmd: %q, exit %+v; want from-create, 4", out.data, out.exit)
	}
	a.remove(t, id, false)
}

// TestLargeOutput: 100 MiB of pseudo-random bytes, from a file bind-mounted
// read-only into the sandbox, arrive over NDJSON whole and in order (the
// same SHA-256), all on stdout; the mount cannot be written.
func TestLargeOutput(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	const size = 100 << 20
	dir := mountDir(t)
	f, err := os.Create(filepath.Join(dir, "blob"))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, want), rand.NewChaCha8([32]byte{'a', 'r', 'c', 'b', 'o', 'x'}), size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("big"), Mounts: &[]api.Mount{{Source: dir, Target: "/data", Readonly: agenttest.Ptr(true)}}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	got := sha256.New()
	var n int64
	var stderr []byte
	res := a.runBig(ctx, t, id, api.RunRequest{Cmd: []string{"cat", "/data/blob"}}, func(stream string, data []byte) {
		if stream != "stdout" {
			stderr = append(stderr, data...)
			return
		}
		n += int64(len(data))
		got.Write(data)
	})
	if res.Status != http.StatusOK || res.Cut || res.Code != 0 || len(stderr) > 0 {
		t.Fatalf("cat: %+v, stderr %q", res, stderr)
	}
	if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Errorf("received %d bytes, sha256 %x; sent %d bytes, sha256 %x", n, got.Sum(nil), size, want.Sum(nil))
	}
	t.Logf("100 MiB in %d messages", res.Messages)

	res = a.run(t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo x > /data/written"}})
	if res.Code == 0 {
		t.Error("writing into the read-only mount succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "written")); err == nil {
		t.Error("a write in the sandbox reached the host directory")
	}
	a.remove(t, id, false)
}

// TestTTL: a sandbox with ttl_seconds 1 is stopped and removed by itself,
// no sooner than a second after it was created; its events end in stopped
// then removed (seen on the WebSocket and on an NDJSON stream filtered by
// action), and nothing of it is left.
func TestTTL(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	const id = "ttl"
	ws := a.eventsWS(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	removed := a.events(t, api.StreamEventsParams{Action: agenttest.Ptr[api.EventAction]("removed")})
	a.createOnly(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id), TtlSeconds: agenttest.Ptr[int64](1)})
	created := ws.expect(id, "created")[0]
	// On a loaded machine the TTL may come before the sandbox is ready:
	// the stop then ends the start.
	stopped, before := ws.until(id, "stopped")
	for i, ev := range before {
		if ev.Action != "stopping" && (ev.Action != "ready" || i != 0) {
			t.Errorf("between created and stopped: %s, want ready (if it got that far) and stopping", describe(before))
		}
	}
	gone := ws.expect(id, "removed")[0]
	if lived := time.Duration(gone.Timestamp - created.Timestamp); lived < time.Second {
		t.Errorf("removed %s after creation, before its TTL of 1s", lived)
	}
	if stopped.Timestamp > gone.Timestamp {
		t.Errorf("stopped at %d after removed at %d", stopped.Timestamp, gone.Timestamp)
	}
	if ev, _ := removed.until(id, "removed"); ev.Timestamp != gone.Timestamp {
		t.Errorf("the action-filtered stream saw %+v, the WebSocket %+v", ev, gone)
	}
	if r, err := a.Client(t).GetSandboxWithResponse(reqCtx(t), id); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("GET after the TTL: %d %s; want 404", r.StatusCode(), r.Body)
	}
	a.assertGone(t, id)
}

// TestFilters: listing by labels (every one must match; a value may hold
// '=') and by state; a bad state or label is 400.
func TestFilters(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	labels := map[string]map[string]string{
		"f-a": {"suite": "filters", "team": "a", "tier": "web", "expr": "x=y"},
		"f-b": {"suite": "filters", "team": "a", "tier": "db"},
		"f-c": {"suite": "filters", "team": "b", "tier": "web"},
	}
	for _, id := range []string{"f-a", "f-b", "f-c"} {
		a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id), Labels: agenttest.Ptr(labels[id])})
	}
	list := func(state string, labels ...string) []string {
		p := api.ListSandboxesParams{Label: agenttest.Ptr(append([]string{"suite=filters"}, labels...))}
		if state != "" {
			p.State = agenttest.Ptr(api.SandboxState(state))
		}
		return a.list(t, p)
	}
	check := func(got []string, want ...string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("listed %v, want %v", got, want)
		}
	}
	check(list(""), "f-a", "f-b", "f-c")
	check(list("", "team=a"), "f-a", "f-b")
	check(list("", "team=a", "tier=db"), "f-b")
	check(list("", "tier=web"), "f-a", "f-c")
	check(list("", "expr=x=y"), "f-a")
	check(list("", "team=c"))
	check(list("", "team="))
	check(list("ready"), "f-a", "f-b", "f-c")

	r, err := a.Client(t).StopSandboxWithResponse(reqCtx(t), "f-c", api.StopSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	} else if r.JSON200 == nil || r.JSON200.State != "stopped" {
		t.Fatalf("stop f-c: %d %s", r.StatusCode(), r.Body)
	}
	check(list("stopped"), "f-c")
	check(list("ready"), "f-a", "f-b")
	check(list("ready", "tier=web"), "f-a")
	check(list("running"))

	raw := a.RawClient(t)
	if r, err := raw.ListSandboxesWithResponse(reqCtx(t), &api.ListSandboxesParams{State: agenttest.Ptr[api.SandboxState]("asleep")}); err != nil {
		t.Fatal(err)
	} else if r.JSON400 == nil {
		t.Errorf("state=asleep: %d %s; want 400", r.StatusCode(), r.Body)
	}
	if r, err := raw.ListSandboxesWithResponse(reqCtx(t), &api.ListSandboxesParams{Label: &[]string{"novalue"}}); err != nil {
		t.Fatal(err)
	} else if r.JSON400 == nil {
		t.Errorf("label=novalue: %d %s; want 400", r.StatusCode(), r.Body)
	}
	for _, id := range []string{"f-a", "f-b", "f-c"} {
		a.remove(t, id, false)
	}
}

// TestWebSocketRun: a run over the WebSocket sends stdout and stderr apart
// and the exit code last, then closes normally; the client closing the
// socket hangs the command up (129) and the sandbox is ready again; a bad run
// request closes the socket with 4400.
func TestWebSocketRun(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("ws")})
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	w, e := a.runWS(ctx, t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}})
	if w == nil {
		t.Fatalf("WebSocket run: %s", refusal(e))
	}
	res := w.finish(ctx)
	if string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" || res.Code != 7 {
		t.Errorf("WebSocket run: stdout %q, stderr %q, exit %d; want out, err, 7", res.Stdout, res.Stderr, res.Code)
	}
	if idle := evs.expect(id, "running", "idle")[1]; attrs(idle)["exit_code"] != "7" {
		t.Errorf("idle %v, want exit_code 7", attrs(idle))
	}

	watch, stop := context.WithCancel(ctx)
	w, e = a.runWS(watch, t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo started; exec sleep 1001"}})
	if w == nil {
		t.Fatalf("WebSocket run: %s", refusal(e))
	}
	if o := w.next(); o.Stream != "stdout" || string(o.Data) != "started\n" {
		t.Fatalf("first message %+v, want stdout started", o)
	}
	evs.expect(id, "running")
	stop() // the client goes away: the command is hung up, and SIGHUP ends it
	if idle := evs.expect(id, "idle")[0]; attrs(idle)["exit_code"] != "129" {
		t.Errorf("idle after the client closed: %v, want exit_code 129", attrs(idle))
	}
	if info := a.get(t, id); info.State != "ready" || info.LastExitCode == nil || *info.LastExitCode != 129 {
		t.Errorf("after the client closed: %+v; want ready, last exit 129", info)
	}
	if ps := psArgs(t, a, id); strings.Contains(ps, "sleep 1001") {
		t.Errorf("the command outlived its socket:\n%s", ps)
	}
	evs.expect(id, "running", "idle") // the ps

	// A bad request is refused after the upgrade, with close code 4400.
	c, resp, err := a.dialWS(ctx, "/v1/sandboxes/"+id+"/run")
	if err != nil {
		t.Fatalf("run WebSocket: %v (%s)", err, statusOf(resp))
	}
	defer func() { _ = c.CloseNow() }()
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"cmd":[]}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != 4400 {
		t.Errorf("a run request without cmd: %v, want a close with 4400", err)
	}
	a.remove(t, id, false)
}

// TestRunTimeout: timeout_seconds kills the command (exit 137) after its
// output so far has arrived, and nothing of it is left in the sandbox.
func TestRunTimeout(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("timeout")})
	res := a.run(t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo started; sleep 1002; echo never"}, TimeoutSeconds: agenttest.Ptr[int64](1)})
	if string(res.Stdout) != "started\n" || res.Code != 137 {
		t.Errorf("past its timeout: stdout %q, exit %d; want started, 137", res.Stdout, res.Code)
	}
	if info := a.get(t, id); info.State != "ready" || info.LastExitCode == nil || *info.LastExitCode != 137 {
		t.Errorf("after the timeout: %+v; want ready, last exit 137", info)
	}
	if ps := psArgs(t, a, id); strings.Contains(ps, "sleep 1002") {
		t.Errorf("the command outlived its timeout:\n%s", ps)
	}
	a.remove(t, id, false)
}

// TestRunTimeoutWithBackgroundChild: a command whose background child keeps
// its output open (a daemon it started) is still ended by timeout_seconds,
// the sandbox is ready for the next run, and it can be removed. Under runc,
// whose exec copies output through pipes of its own, this used to wedge
// the sandbox: the run, and any stop or remove behind it, never ended.
func TestRunTimeoutWithBackgroundChild(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("bgchild")})
	res := a.run(t, id, api.RunRequest{Cmd: []string{"sh", "-c", "sleep 1008 & echo hi"}, TimeoutSeconds: agenttest.Ptr[int64](1)})
	if string(res.Stdout) != "hi\n" || (res.Code != 137 && res.Code != 0) {
		t.Errorf("stdout %q, exit %d; want hi, then 137 (or 0 where the runtime does not wait for the child)", res.Stdout, res.Code)
	}
	res = a.run(t, id, api.RunRequest{Cmd: []string{"echo", "next"}})
	if string(res.Stdout) != "next\n" || res.Code != 0 {
		t.Errorf("next run: stdout %q, exit %d", res.Stdout, res.Code)
	}
	a.remove(t, id, true)
}

// TestRunOutputCutAfterExit: a command whose background child keeps
// writing to its output after it exited. Everything the command wrote
// arrives, the run ends with its exit code all the same (the child is not
// followed for ever), and the exit message says the stream was cut and
// why; the sandbox is ready for the next run.
func TestRunOutputCutAfterExit(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("holder")})
	res := a.run(t, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo first; (while :; do echo more; sleep 0.1; done) & exit 5"}})
	if !strings.HasPrefix(string(res.Stdout), "first\n") || res.Code != 5 {
		t.Errorf("stdout %q, exit %d; want first (then maybe some of the child's), 5", res.Stdout, res.Code)
	}
	if !res.Truncated || res.Note == "" {
		t.Errorf("exit message: truncated %v, message %q; want the cut stream named, and why", res.Truncated, res.Note)
	}
	if out := a.sh(t, id, "echo next"); out != "next\n" {
		t.Errorf("the next run: %q", out)
	}
	a.remove(t, id, true)
}

// TestBadInput: what the API refuses and with which status. Malformed or
// unsupported requests are 400 naming the field, unknown sandboxes 404,
// and requests in the wrong state 409; none of them leaves a sandbox.
func TestBadInput(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	raw := a.RawClient(t)
	ctx := reqCtx(t)

	for _, tc := range []struct{ body, field string }{
		{`{"id":"bad id!"}`, "id"},
		{`{"id":"-leading-dash"}`, "id"},
		{`{"id":"` + strings.Repeat("x", 65) + `"}`, "id"},
		{`{"id":"bi-kernel","kernel":"/boot/vmlinuz"}`, "kernel"},
		{`{"id":"bi-bootargs","boot_args":"console=ttyS0"}`, "boot_args"},
		{`{"id":"bi-unknown","colour":"blue"}`, "colour"},
		{`{"id":"bi-relmount","mounts":[{"source":"/tmp","target":"relative"}]}`, "mounts"},
		{`{"id":"bi-dotmount","mounts":[{"source":"/tmp","target":"/a/../etc"}]}`, "mounts"},
		{`{"id":"bi-nosource","mounts":[{"source":"/nonexistent-e2e-source","target":"/x"}]}`, "mounts[0].source"},
		{`{"id":"bi-vcpus","limits":{"vcpus":-1}}`, "limits.vcpus"},
		{`{"id":"bi-ttl","ttl_seconds":-1}`, "ttl_seconds"},
		{`{"id":"bi-image","image":"UPPER/Case:tag"}`, "image"},
		{`{"id":"bi-network","network":{"mode":"wormhole"}}`, "network.mode"},
	} {
		r, err := raw.CreateSandboxWithBodyWithResponse(ctx, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if r.JSON400 == nil || !strings.Contains(r.JSON400.Message, tc.field) {
			t.Errorf("create %s: %d %s; want 400 naming %q", tc.body, r.StatusCode(), r.Body, tc.field)
		}
	}
	if ids := a.list(t, api.ListSandboxesParams{}); slices.ContainsFunc(ids, func(id string) bool { return strings.HasPrefix(id, "bi-") }) {
		t.Errorf("a refused create left a sandbox: %v", ids)
	}

	const unknown = "no-such-sandbox"
	if r, err := raw.GetSandboxWithResponse(ctx, unknown); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("GET unknown: %d %s; want 404", r.StatusCode(), r.Body)
	}
	if r, err := raw.RemoveSandboxWithResponse(ctx, unknown, &api.RemoveSandboxParams{}); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("DELETE unknown: %d %s; want 404", r.StatusCode(), r.Body)
	}
	if r, err := raw.StopSandboxWithResponse(ctx, unknown, api.StopSandboxRequest{}); err != nil {
		t.Fatal(err)
	} else if r.JSON404 == nil {
		t.Errorf("stop unknown: %d %s; want 404", r.StatusCode(), r.Body)
	}
	if res := runOver(ctx, t, a.SDK(t), unknown, api.RunRequest{Cmd: []string{"true"}}, nil); res.Status != http.StatusNotFound {
		t.Errorf("run in unknown: %d %q; want 404", res.Status, res.Message)
	}
	if w, e := a.runWS(ctx, t, unknown, api.RunRequest{Cmd: []string{"true"}}); w != nil || e.Code != http.StatusNotFound || e.Closed {
		t.Errorf("WebSocket run in unknown: %s; want 404 before the upgrade", refusal(e))
	}

	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("bad-input")})
	for _, tc := range []struct {
		req   api.RunRequest
		field string
	}{
		{api.RunRequest{}, "cmd"},
		{api.RunRequest{Cmd: []string{}}, "cmd"},
		{api.RunRequest{Cmd: []string{""}}, "cmd"},
		{api.RunRequest{Cmd: []string{"true"}, TimeoutSeconds: agenttest.Ptr[int64](-1)}, "timeout_seconds"},
	} {
		if res := runOver(ctx, t, a.RawSDK(t), id, tc.req, nil); res.Status != http.StatusBadRequest || !strings.Contains(res.Message, tc.field) {
			t.Errorf("run %+v: %d %q; want 400 naming %s", tc.req, res.Status, res.Message, tc.field)
		}
	}
	r, err := raw.StopSandboxWithResponse(ctx, id, api.StopSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	} else if r.JSON200 == nil || r.JSON200.State != "stopped" {
		t.Fatalf("stop: %d %s", r.StatusCode(), r.Body)
	}
	if res := runOver(ctx, t, a.SDK(t), id, api.RunRequest{Cmd: []string{"true"}}, nil); res.Status != http.StatusConflict {
		t.Errorf("run in a stopped sandbox: %d %q; want 409", res.Status, res.Message)
	}
	if w, e := a.runWS(ctx, t, id, api.RunRequest{Cmd: []string{"true"}}); w != nil || e.Code != http.StatusConflict || e.Closed {
		t.Errorf("WebSocket run in a stopped sandbox: %s; want 409 before the upgrade", refusal(e))
	}
	a.remove(t, id, false)
}

// TestBackendUnavailable: an agent whose OCI runtime is missing serves on;
// the sandbox endpoints answer 503 with the reason, the rest 200.
func TestBackendUnavailable(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "no-runtime")}, extra: []string{"--oci-runtime", "/nonexistent/runc"}, noBox: true})
	c := a.Client(t)
	ctx := reqCtx(t)
	if r, err := c.GetPingWithResponse(ctx); err != nil {
		t.Fatal(err)
	} else if r.JSON200 == nil {
		t.Errorf("ping: %d %s, want 200", r.StatusCode(), r.Body)
	}
	if r, err := c.ListSandboxesWithResponse(ctx, &api.ListSandboxesParams{}); err != nil {
		t.Fatal(err)
	} else if r.JSON503 == nil || !strings.Contains(r.JSON503.Message, "/nonexistent/runc") {
		t.Errorf("list: %d %s; want 503 naming the runtime", r.StatusCode(), r.Body)
	}
	if r, err := c.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Id: agenttest.Ptr("nope")}); err != nil {
		t.Fatal(err)
	} else if r.JSON503 == nil || !strings.Contains(r.JSON503.Message, "/nonexistent/runc") {
		t.Errorf("create: %d %s; want 503 naming the runtime", r.StatusCode(), r.Body)
	}
	if res := a.runNDJSON(ctx, t, "nope", api.RunRequest{Cmd: []string{"true"}}, nil); res.Status != http.StatusServiceUnavailable {
		t.Errorf("run: %d %q; want 503", res.Status, res.Message)
	}
}
