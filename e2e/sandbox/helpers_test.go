package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// waitTimeout bounds every wait on the agent: a sandbox is ready in well
// under a second, so this only ends a test that would otherwise hang,
// even on a machine so loaded that reading a few MiB of output takes half
// a minute.
const waitTimeout = 2 * time.Minute

// reqCtx bounds a request, so that an agent that never answers fails the
// test instead of hanging it.
func reqCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// checkSchema checks a message received over a WebSocket against a schema
// of openapi.yaml (the generated client's transport checks the rest).
func checkSchema(t testing.TB, schema string, raw []byte) {
	t.Helper()
	agenttest.CheckSchema(t, schema, raw)
}

// mountDir makes an empty directory under the agents' mount root, for a
// test's bind mounts, and removes it when the test ends. It is searchable
// and readable by all: a sandbox's root is an unprivileged user here.
func mountDir(t testing.TB) string {
	t.Helper()
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	dir, err := os.MkdirTemp(suite.mountRoot, name+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// ---- events ----

// eventStream is a subscription to /v1/events through the SDK, read in
// the background. It does not reconnect: a stream that ends is over, as
// the tests' expectations want.
type eventStream struct {
	t  testing.TB
	ch chan api.Event
}

// events subscribes to the NDJSON event stream. The subscription is in
// place when it returns: the agent subscribes before it answers.
func (a *agentProc) events(t testing.TB, params api.StreamEventsParams) *eventStream {
	t.Helper()
	return a.subscribe(t, a.SDK(t), client.EventsOptions{ID: agenttest.Deref(params.Id), Action: agenttest.Deref(params.Action)})
}

// eventsWS subscribes to the event stream over a WebSocket, every
// message checked against the contract.
func (a *agentProc) eventsWS(t testing.TB, params api.StreamEventsParams) *eventStream {
	t.Helper()
	return a.subscribe(t, a.SDK(t), client.EventsOptions{ID: agenttest.Deref(params.Id), Action: agenttest.Deref(params.Action), WebSocket: true})
}

// subscribe subscribes over c; it returns once the agent has answered.
func (a *agentProc) subscribe(t testing.TB, c *client.Client, o client.EventsOptions) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &eventStream{t: t, ch: make(chan api.Event, 256)}
	answered := make(chan struct{})
	o.OnConnect = func() { close(answered) }
	o.OnReconnect = func(error) { cancel() } // one connection only
	failed := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.ch)
		for ev, err := range c.Events(ctx, o) {
			if err != nil {
				failed <- err
				return
			}
			s.ch <- ev
		}
	}()
	select {
	case <-answered:
	case err := <-failed:
		cancel()
		t.Fatalf("GET /v1/events: %v", err)
	case <-time.After(waitTimeout):
		cancel()
		t.Fatalf("GET /v1/events: no answer within %s", waitTimeout)
	}
	t.Cleanup(func() {
		cancel()
		for range s.ch { // drain, so the reader ends
		}
		<-done
	})
	return s
}

func statusOf(resp *http.Response) string {
	if resp == nil {
		return "no response"
	}
	return resp.Status
}

// next returns the next event, failing the test if none comes in time.
func (s *eventStream) next() api.Event {
	s.t.Helper()
	select {
	case ev, ok := <-s.ch:
		if !ok {
			s.t.Fatal("the event stream ended")
		}
		return ev
	case <-time.After(waitTimeout):
		s.t.Fatalf("no event within %s", waitTimeout)
	}
	return api.Event{}
}

// expect takes the next events and requires them to be id's, with these
// actions in this order. The events of runs (run.started, run.exited),
// which interleave with a sandbox's states on an axis of their own, are
// passed over unless asked for.
func (s *eventStream) expect(id string, actions ...api.EventAction) []api.Event {
	s.t.Helper()
	var got []api.Event
	for _, want := range actions {
		ev := s.next()
		for isRunEvent(ev.Action) && !isRunEvent(want) {
			ev = s.next()
		}
		got = append(got, ev)
		if ev.SandboxId != id || ev.Action != want {
			s.t.Fatalf("events %s; want %s's %v", describe(got), id, actions)
		}
		if ev.Timestamp <= 0 {
			s.t.Errorf("event %+v has no timestamp", ev)
		}
	}
	return got
}

// isRunEvent says whether action is one of a run's, not the sandbox's.
func isRunEvent(action api.EventAction) bool {
	return strings.HasPrefix(string(action), "run.")
}

// until reads events until one of id's with action comes, and returns it
// and the events of id before it. A failed event ends the wait.
func (s *eventStream) until(id string, action api.EventAction) (api.Event, []api.Event) {
	s.t.Helper()
	var before []api.Event
	for {
		ev := s.next()
		if ev.SandboxId != id {
			continue
		}
		if ev.Action == action {
			return ev, before
		}
		if ev.Action == "failed" {
			s.t.Fatalf("sandbox %s failed waiting for %s: %v", id, action, attrs(ev))
		}
		before = append(before, ev)
	}
}

func describe(evs []api.Event) string {
	var parts []string
	for _, ev := range evs {
		parts = append(parts, fmt.Sprintf("%s:%s%v", ev.SandboxId, ev.Action, attrs(ev)))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func attrs(ev api.Event) map[string]string {
	if ev.Attributes == nil {
		return nil
	}
	return *ev.Attributes
}

// ---- sandboxes ----

// create creates a sandbox and waits for its ready event (watched on a
// subscription made first). It registers a cleanup that removes the
// sandbox if the test did not, and checks that nothing of it is left.
func (a *agentProc) create(t testing.TB, req api.CreateSandboxRequest) string {
	t.Helper()
	if req.Id == nil {
		t.Fatal("tests name their sandboxes")
	}
	id := *req.Id
	evs := a.events(t, api.StreamEventsParams{Id: &id})
	a.createOnly(t, req)
	evs.expect(id, "created")
	evs.until(id, "ready")
	return id
}

// createOnly posts a create request, requires a 202 in state starting,
// and registers the cleanup of create.
func (a *agentProc) createOnly(t testing.TB, req api.CreateSandboxRequest) {
	t.Helper()
	id := *req.Id
	r, err := a.Client(t).CreateSandboxWithResponse(reqCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON202 == nil {
		t.Fatalf("create %s: %d %s, want 202", id, r.StatusCode(), r.Body)
	}
	if r.JSON202.Id != id || r.JSON202.State != "starting" {
		t.Errorf("create %s answered %+v, want the id in state starting", id, *r.JSON202)
	}
	a.cleanupSandbox(t, id)
}

// cleanupSandbox removes id at the end of t if it is still there, and
// checks that nothing of it is left either way.
func (a *agentProc) cleanupSandbox(t testing.TB, id string) {
	t.Cleanup(func() {
		r, err := a.Client(t).GetSandboxWithResponse(reqCtx(t), id)
		if err != nil {
			t.Errorf("cleanup of %s: %v", id, err)
			return
		}
		if r.StatusCode() == http.StatusOK {
			if !t.Failed() {
				t.Errorf("the test left sandbox %s (%s)", id, r.JSON200.State)
			}
			a.remove(t, id, true)
			return
		}
		a.assertGone(t, id)
	})
}

// remove deletes a sandbox (204) and checks that nothing of it is left.
func (a *agentProc) remove(t testing.TB, id string, force bool) {
	t.Helper()
	r, err := a.Client(t).RemoveSandboxWithResponse(reqCtx(t), id, &api.RemoveSandboxParams{Force: &force})
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusCode() != http.StatusNoContent {
		t.Fatalf("DELETE %s: %d %s, want 204", id, r.StatusCode(), r.Body)
	}
	a.assertGone(t, id)
}

// get inspects a sandbox, requiring a 200.
func (a *agentProc) get(t testing.TB, id string) api.SandboxInfo {
	t.Helper()
	r, err := a.Client(t).GetSandboxWithResponse(reqCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON200 == nil {
		t.Fatalf("GET %s: %d %s", id, r.StatusCode(), r.Body)
	}
	return *r.JSON200
}

// list lists the sandboxes that match, by id.
func (a *agentProc) list(t testing.TB, params api.ListSandboxesParams) []string {
	t.Helper()
	r, err := a.Client(t).ListSandboxesWithResponse(reqCtx(t), &params)
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON200 == nil {
		t.Fatalf("GET /v1/sandboxes: %d %s", r.StatusCode(), r.Body)
	}
	var ids []string
	for _, s := range r.JSON200.Sandboxes {
		ids = append(ids, s.Id)
	}
	slices.Sort(ids)
	return ids
}

// ---- runs ----

// runResult is what a run streamed.
type runResult struct {
	Status   int    // the HTTP status (200 for a stream)
	Message  string // the error message of a refusal
	Stdout   []byte
	Stderr   []byte
	Code     int  // the exit code of the last message
	Messages int  // output messages before the exit message
	Cut      bool // the stream ended without an exit message
	// Truncated and Note are the exit message's truncated and message:
	// output was cut (a background holder, a bound, a slow client), and
	// what it says about it.
	Truncated bool
	Note      string
}

// runNDJSON posts a run and reads its NDJSON stream to the end through
// the SDK, every message checked against the contract. sink, when set,
// takes the output instead of the result's buffers. A stream must end
// with exactly one exit message, done, with an exit code.
func (a *agentProc) runNDJSON(ctx context.Context, t testing.TB, id string, req api.RunRequest, sink func(stream string, data []byte)) runResult {
	t.Helper()
	return runOver(ctx, t, a.SDK(t), id, req, sink)
}

// runBig is runNDJSON for output too large for the validating client,
// which checks format: byte with a regular expression: about 130 ms a
// 256 KiB message, 13 s for 100 MiB, minutes under -race. It checks the
// exit message and a small first message (64 KiB at most) against the
// schema; the SDK checks the shape of every message.
func (a *agentProc) runBig(ctx context.Context, t testing.TB, id string, req api.RunRequest, sink func(stream string, data []byte)) runResult {
	t.Helper()
	n := 0
	c, err := client.New("unix://"+a.Socket(),
		client.WithHTTPClient(&http.Client{Transport: a.Transport()}),
		client.WithObserver(func(schema string, line []byte) {
			if n++; n == 1 && len(line) <= 64<<10 || bytes.Contains(line, []byte(`"exit"`)) {
				checkSchema(t, schema, line)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	return runOver(ctx, t, c, id, req, sink)
}

// runOver runs req over c's NDJSON run.
func runOver(ctx context.Context, t testing.TB, c *client.Client, id string, req api.RunRequest, sink func(stream string, data []byte)) runResult {
	t.Helper()
	return collectRun(ctx, t, c.Run(ctx, id, req), http.StatusOK, req.Cmd, sink)
}

// collectRun reads a run's output into a result. ok is the status of a
// run that was not refused.
func collectRun(ctx context.Context, t testing.TB, out iter.Seq2[client.Output, error], ok int, cmd []string, sink func(stream string, data []byte)) runResult {
	t.Helper()
	res := runResult{Status: ok, Code: -1000}
	if sink == nil {
		sink = res.collect
	}
	exited := false
	for o, err := range out {
		var e *client.Error
		switch {
		case errors.As(err, &e) && !exited && res.Messages == 0:
			if e.Message == "" {
				t.Errorf("run %v refused with %d and no message", cmd, e.Code)
			}
			res.Status, res.Message = e.Code, e.Message
			return res
		case err != nil:
			if !exited {
				res.Cut = true
			}
			if !exited && ctx.Err() == nil || exited {
				t.Errorf("run %v: %v", cmd, err)
			}
			return res
		case o.Exit != nil:
			exited = true
			res.Code, res.Truncated, res.Note = o.Exit.Code, len(o.Exit.Truncated) > 0, o.Exit.Message
		default:
			res.Messages++
			sink(o.Stream, o.Data)
		}
	}
	if !exited {
		res.Cut = true
	}
	return res
}

// collect keeps output in the result's buffers.
func (r *runResult) collect(stream string, data []byte) {
	if stream == "stdout" {
		r.Stdout = append(r.Stdout, data...)
	} else {
		r.Stderr = append(r.Stderr, data...)
	}
}

// run runs a command over NDJSON and requires the stream.
func (a *agentProc) run(t testing.TB, id string, req api.RunRequest) runResult {
	t.Helper()
	res := a.runNDJSON(reqCtx(t), t, id, req, nil)
	if res.Status != http.StatusOK || res.Cut {
		t.Fatalf("run %v in %s: %d %s (stream cut: %v)", req.Cmd, id, res.Status, res.Message, res.Cut)
	}
	return res
}

// sh runs a shell command and returns its stdout, requiring exit 0.
func (a *agentProc) sh(t testing.TB, id, script string) string {
	t.Helper()
	res := a.run(t, id, api.RunRequest{Cmd: []string{"sh", "-c", script}})
	if res.Code != 0 {
		t.Fatalf("sh -c %q in %s: exit %d, stderr %q", script, id, res.Code, res.Stderr)
	}
	return string(res.Stdout)
}

// wsRun is a run or an exec over a WebSocket, its output read through
// the SDK a message at a time.
type wsRun struct {
	t    testing.TB
	pull func() (client.Output, error, bool)
	cmd  []string
	exec *client.ExecSession // an exec's, for its input
}

func newWSRun(t testing.TB, out iter.Seq2[client.Output, error], cmd []string) *wsRun {
	pull, stop := iter.Pull2(out)
	t.Cleanup(stop)
	return &wsRun{t: t, pull: pull, cmd: cmd}
}

// runWS opens the run WebSocket of id, sends the request as its first
// message and waits for the first output. A refusal (before the upgrade,
// or a close with 4000+status after it) returns nil and the *Error.
func (a *agentProc) runWS(ctx context.Context, t testing.TB, id string, req api.RunRequest) (*wsRun, *client.Error) {
	t.Helper()
	w := newWSRun(t, a.SDK(t).RunWS(ctx, id, req), req.Cmd)
	first, err, ok := w.pull()
	var e *client.Error
	if errors.As(err, &e) {
		return nil, e
	}
	w.pull = pushBack(w.pull, first, err, ok)
	return w, nil
}

// pushBack returns pull with (o, err, ok) put back in front.
func pushBack(pull func() (client.Output, error, bool), o client.Output, err error, ok bool) func() (client.Output, error, bool) {
	pending := true
	return func() (client.Output, error, bool) {
		if pending {
			pending = false
			return o, err, ok
		}
		return pull()
	}
}

// refusal is an *Error's status, for a failure message.
func refusal(e *client.Error) string {
	if e == nil {
		return "no refusal"
	}
	return e.Error()
}

// next returns the next output message, failing the test at an error or
// the end of the stream.
func (w *wsRun) next() client.Output {
	w.t.Helper()
	o, err, ok := w.pull()
	if err != nil || !ok {
		w.t.Fatalf("WebSocket %v: %v (ended: %v)", w.cmd, err, !ok)
	}
	return o
}

// finish reads to the exit message and the normal close after it.
func (w *wsRun) finish(ctx context.Context) runResult {
	w.t.Helper()
	rest := func(yield func(client.Output, error) bool) {
		for {
			o, err, ok := w.pull()
			if !ok || !yield(o, err) {
				return
			}
		}
	}
	return collectRun(ctx, w.t, rest, http.StatusSwitchingProtocols, w.cmd, nil)
}

// ---- nothing left ----

// assertGone checks that nothing of sandbox id is left on the machine:
// no directory, no mount, no cgroup named after it, no process of it, and
// the OCI runtime does not know it.
func (a *agentProc) assertGone(t testing.TB, id string) {
	t.Helper()
	box := filepath.Join(a.stateDir, "sandboxes", id)
	for _, dir := range []string{box, filepath.Join(a.stateDir, "runtime", id)} {
		if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("sandbox %s: %s is still there (%v)", id, dir, err)
		}
	}

	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := f[4]
		if mp == box || strings.HasPrefix(mp, box+"/") ||
			strings.HasPrefix(mp, a.stateDir+"/") && slices.Contains(strings.Split(mp, "/"), id) {
			t.Errorf("sandbox %s: mount left: %s", id, line)
		}
	}

	_ = filepath.WalkDir("/sys/fs/cgroup", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a cgroup removed while walking
		}
		if d.IsDir() && d.Name() == id {
			t.Errorf("sandbox %s: cgroup %s left", id, p)
		}
		return nil
	})

	for _, pid := range allPids() {
		proc := "/proc/" + strconv.Itoa(pid)
		if pid == a.PID() {
			continue // the agent itself names the state directory
		}
		if cmdline, err := os.ReadFile(proc + "/cmdline"); err == nil {
			args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
			joined := strings.Join(args, " ")
			if strings.Contains(joined, box) || strings.Contains(joined, a.stateDir) && slices.Contains(args, id) {
				t.Errorf("sandbox %s: process %d left: %s", id, pid, joined)
			}
		}
		if cg, err := os.ReadFile(proc + "/cgroup"); err == nil {
			for _, line := range strings.Split(string(cg), "\n") {
				if strings.HasSuffix(line, "/"+id) || strings.Contains(line, "/"+id+"/") {
					t.Errorf("sandbox %s: process %d left in its cgroup: %s", id, pid, line)
					break
				}
			}
		}
	}

	if a.runtime != "" {
		out, err := exec.Command(a.runtime, "--root", filepath.Join(a.stateDir, "runtime"), "list", "--format", "json").CombinedOutput()
		if err != nil {
			t.Errorf("%s list: %v: %s", a.runtime, err, out)
		} else if bytes.Contains(out, []byte(`"id":"`+id+`"`)) {
			t.Errorf("sandbox %s: %s still lists it: %s", id, a.runtime, out)
		}
	}
}

// allPids lists the processes of the machine.
func allPids() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// initPid is the pid of a sandbox's init, as its OCI runtime reports it.
func (a *agentProc) initPid(t testing.TB, id string) int {
	t.Helper()
	out, err := exec.Command(a.runtime, "--root", filepath.Join(a.stateDir, "runtime"), "state", id).Output()
	if err != nil {
		t.Fatalf("%s state %s: %v", a.runtime, id, err)
	}
	var st struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil || st.Pid <= 0 || st.Status != "running" {
		t.Fatalf("%s state %s: %s (%v)", a.runtime, id, out, err)
	}
	return st.Pid
}

// syscallKill sends SIGKILL to a process this test's agent started.
func syscallKill(pid int) error { return unix.Kill(pid, unix.SIGKILL) }
