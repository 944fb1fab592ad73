package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// waitTimeout bounds every wait on the agent: a sandbox is ready in well
// under a second, so this only ends a test that would otherwise hang.
const waitTimeout = 30 * time.Second

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
	spec, _ := apitest.Spec(t)
	ref := spec.Components.Schemas[schema]
	if ref == nil || ref.Value == nil {
		t.Fatalf("openapi.yaml has no schema %s", schema)
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Errorf("contract: WebSocket message is not JSON: %v: %.200s", err, raw)
		return
	}
	if err := ref.Value.VisitJSON(v); err != nil {
		t.Errorf("contract: WebSocket message is no %s: %v: %.200s", schema, err, raw)
	}
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

// eventStream is a subscription to /v1/events, read in the background.
type eventStream struct {
	t  testing.TB
	ch chan api.Event
}

// events subscribes to the NDJSON event stream. The subscription is in
// place when it returns: the agent subscribes before it answers.
func (a *agentProc) events(t testing.TB, params api.StreamEventsParams) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := a.Client(t).StreamEvents(ctx, &params)
	if err != nil {
		cancel()
		t.Fatalf("GET /v1/events: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson") {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET /v1/events: %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	s := &eventStream{t: t, ch: make(chan api.Event, 256)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.ch)
		dec := json.NewDecoder(resp.Body)
		for {
			var ev api.Event
			if err := dec.Decode(&ev); err != nil {
				return
			}
			s.ch <- ev
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		for range s.ch { // drain, so the reader ends
		}
		<-done
	})
	return s
}

// eventsWS subscribes to the event stream over a WebSocket; query is the
// URL's query (such as "id=x").
func (a *agentProc) eventsWS(t testing.TB, query string) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, resp, err := a.dialWS(ctx, "/v1/events?"+query)
	if err != nil {
		cancel()
		t.Fatalf("WebSocket /v1/events: %v (%v)", err, statusOf(resp))
	}
	s := &eventStream{t: t, ch: make(chan api.Event, 256)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.ch)
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if typ != websocket.MessageText {
				t.Errorf("event message of type %v, want text", typ)
			}
			checkSchema(t, "Event", msg)
			var ev api.Event
			if err := json.Unmarshal(msg, &ev); err != nil {
				t.Errorf("event message: %v", err)
				return
			}
			s.ch <- ev
		}
	}()
	t.Cleanup(func() {
		_ = c.Close(websocket.StatusNormalClosure, "")
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
// actions in this order.
func (s *eventStream) expect(id string, actions ...api.EventAction) []api.Event {
	s.t.Helper()
	var got []api.Event
	for _, want := range actions {
		ev := s.next()
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

// runNDJSON posts a run and reads its NDJSON stream to the end. sink,
// when set, takes the output instead of the result's buffers. A stream
// must end with exactly one exit message, done, with an exit code.
func (a *agentProc) runNDJSON(ctx context.Context, t testing.TB, id string, req api.RunRequest, sink func(stream string, data []byte)) runResult {
	t.Helper()
	return runOver(ctx, t, a.Client(t), id, req, sink, false)
}

// runBig is runNDJSON for output too large for the validating client,
// which checks format: byte with a regular expression: about 130 ms a
// 256 KiB message, 13 s for 100 MiB, minutes under -race. It checks the
// exit message and a small first message (64 KiB at most) against the
// schema itself, and the shape of every message: known fields only, valid
// base64. Lines in the agent's own encoding of an output message are
// decoded directly, the others (the exit message) as JSON: under -race,
// encoding/json takes half a minute for 100 MiB.
func (a *agentProc) runBig(ctx context.Context, t testing.TB, id string, req api.RunRequest, sink func(stream string, data []byte)) runResult {
	t.Helper()
	c, err := api.NewClientWithResponses("http://agent", api.WithHTTPClient(&http.Client{Transport: a.Transport()}))
	if err != nil {
		t.Fatal(err)
	}
	return runOver(ctx, t, c, id, req, sink, true)
}

// runOver runs req over c. big: c does not validate the stream (see runBig).
func runOver(ctx context.Context, t testing.TB, c *api.ClientWithResponses, id string, req api.RunRequest, sink func(stream string, data []byte), big bool) runResult {
	t.Helper()
	resp, err := c.RunInSandbox(ctx, id, req)
	if err != nil {
		t.Errorf("run %v in %s: %v", req.Cmd, id, err)
		return runResult{Cut: true}
	}
	defer resp.Body.Close()
	res := runResult{Status: resp.StatusCode}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		body, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(body, &e); err != nil || int(e.Code) != resp.StatusCode || e.Message == "" {
			t.Errorf("run refused with %d and body %s, want {code, message}", resp.StatusCode, body)
		}
		res.Message = e.Message
		return res
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-ndjson") {
		t.Errorf("run answered %s, want application/x-ndjson", ct)
	}
	if sink == nil {
		sink = res.collect
	}
	r := bufio.NewReaderSize(resp.Body, 1<<20)
	var data []byte
	for {
		line, err := readLine(r)
		if len(bytes.TrimSpace(line)) == 0 {
			if err == nil {
				continue
			}
			res.Cut = true
			if ctx.Err() == nil {
				t.Errorf("run %v: the stream ended without an exit message after %d messages: %v", req.Cmd, res.Messages, err)
			}
			return res
		}
		if big && res.Messages > 0 {
			if stream, b64, ok := fastOutput(line); ok {
				if data, err = base64.StdEncoding.AppendDecode(data[:0], b64); err != nil || len(data) == 0 {
					t.Errorf("output message with bad data (%v): %.200s", err, line)
					res.Cut = true
					return res
				}
				res.Messages++
				sink(stream, data)
				continue
			}
		}
		var m api.OutputMessage
		strict := json.NewDecoder(bytes.NewReader(line))
		strict.DisallowUnknownFields()
		if err := strict.Decode(&m); err != nil {
			t.Errorf("output message: %v: %.200s", err, line)
			res.Cut = true
			return res
		}
		if big && (res.Messages == 0 && len(line) <= 64<<10 || m.Stream == "exit") {
			checkSchema(t, "OutputMessage", line)
		}
		if res.take(t, m, sink) {
			res.exitNotes(line)
			break
		}
	}
	if rest, err := io.ReadAll(r); err != nil || len(bytes.TrimSpace(rest)) > 0 {
		t.Errorf("run %v: after the exit message: %.200q (%v), want the end of the stream", req.Cmd, rest, err)
	}
	return res
}

// readLine reads one NDJSON line, however long.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		return line, err
	}
	long := append([]byte(nil), line...)
	for errors.Is(err, bufio.ErrBufferFull) {
		line, err = r.ReadSlice('\n')
		long = append(long, line...)
	}
	return long, err
}

// fastOutput recognises an output message in the agent's own encoding,
// {"stream":"stdout|stderr","data":"<base64>"}, and returns its parts.
func fastOutput(line []byte) (stream string, b64 []byte, ok bool) {
	line = bytes.TrimSpace(line)
	for _, stream := range []string{"stdout", "stderr"} {
		prefix := `{"stream":"` + stream + `","data":"`
		if rest, found := bytes.CutPrefix(line, []byte(prefix)); found {
			if b64, found := bytes.CutSuffix(rest, []byte(`"}`)); found {
				return stream, b64, true
			}
		}
	}
	return "", nil, false
}

// collect keeps output in the result's buffers.
func (r *runResult) collect(stream string, data []byte) {
	if stream == "stdout" {
		r.Stdout = append(r.Stdout, data...)
	} else {
		r.Stderr = append(r.Stderr, data...)
	}
}

// exitNotes takes truncated and message from the exit message: decoded
// on their own, so that they are read whatever the generated types hold.
// A truncated that is absent, null, false or empty means nothing was cut.
func (r *runResult) exitNotes(raw []byte) {
	var x struct {
		Truncated json.RawMessage `json:"truncated"`
		Message   string          `json:"message"`
	}
	if json.Unmarshal(raw, &x) != nil {
		return
	}
	switch string(bytes.TrimSpace(x.Truncated)) {
	case "", "null", "false", "[]", "{}", `""`:
	default:
		r.Truncated = true
	}
	r.Note = x.Message
}

// take handles one output message and reports whether it was the last.
func (r *runResult) take(t testing.TB, m api.OutputMessage, sink func(string, []byte)) bool {
	t.Helper()
	switch m.Stream {
	case "stdout", "stderr":
		if m.Done != nil && *m.Done || m.ExitCode != nil {
			t.Errorf("output message with done or exit_code: %+v", m)
		}
		if m.Data == nil || len(*m.Data) == 0 {
			t.Errorf("output message without data: %+v", m)
			return false
		}
		r.Messages++
		sink(string(m.Stream), *m.Data)
		return false
	case "exit":
		if m.Done == nil || !*m.Done || m.ExitCode == nil {
			t.Errorf("exit message %+v, want done and an exit code", m)
			r.Code = -1000
		} else {
			r.Code = int(*m.ExitCode)
		}
		return true
	}
	t.Errorf("output message on stream %q", m.Stream)
	return false
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

// wsRun is a run over the WebSocket.
type wsRun struct {
	t testing.TB
	c *websocket.Conn
}

// runWS opens the run WebSocket of id and sends the request as its first
// message. A refusal before the upgrade returns the response instead.
func (a *agentProc) runWS(ctx context.Context, t testing.TB, id string, req api.RunRequest) (*wsRun, *http.Response) {
	t.Helper()
	c, resp, err := a.dialWS(ctx, "/v1/sandboxes/"+url.PathEscape(id)+"/run")
	if err != nil {
		if resp == nil {
			t.Fatalf("WebSocket run in %s: %v", id, err)
		}
		return nil, resp
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, websocket.MessageText, body); err != nil {
		t.Fatalf("send the run request: %v", err)
	}
	return &wsRun{t: t, c: c}, resp
}

// next reads the next output message; at the exit message it returns
// done true and the exit code.
func (w *wsRun) next(ctx context.Context) (m api.OutputMessage, raw []byte) {
	w.t.Helper()
	typ, raw, err := w.c.Read(ctx)
	if err != nil {
		w.t.Fatalf("WebSocket run: %v", err)
	}
	if typ != websocket.MessageText {
		w.t.Errorf("output message of type %v, want text", typ)
	}
	checkSchema(w.t, "OutputMessage", raw)
	if err := json.Unmarshal(raw, &m); err != nil {
		w.t.Fatalf("output message: %v: %.200s", err, raw)
	}
	return m, raw
}

// finish reads to the exit message, then requires a normal close.
func (w *wsRun) finish(ctx context.Context) runResult {
	w.t.Helper()
	var res runResult
	res.Status = http.StatusSwitchingProtocols
	for {
		m, raw := w.next(ctx)
		if res.take(w.t, m, res.collect) {
			res.exitNotes(raw)
			break
		}
	}
	_, extra, err := w.c.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		w.t.Errorf("after the exit message: %q, %v; want a normal close", extra, err)
	}
	return res
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
