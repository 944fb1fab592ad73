package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// startDetached starts a detached run (POST .../runs), requiring a 201.
func (a *agentProc) startDetached(t testing.TB, id string, stdin bool, cmd ...string) api.RunInfo {
	t.Helper()
	r, err := a.Client(t).StartRunWithResponse(reqCtx(t), id, &api.StartRunParams{Stdin: &stdin}, api.RunRequest{Cmd: cmd})
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON201 == nil {
		t.Fatalf("start run %q in %s: %d %s, want 201", cmd, id, r.StatusCode(), r.Body)
	}
	return *r.JSON201
}

// createQuiet creates a sandbox and waits until it is ready by asking for
// it, without an event subscription: a test that makes hundreds of events
// would otherwise end with a subscription cut in the middle of a line.
func (a *agentProc) createQuiet(t testing.TB, id string) string {
	t.Helper()
	a.createOnly(t, api.CreateSandboxRequest{Id: &id})
	deadline := time.Now().Add(waitTimeout)
	for a.get(t, id).State != "ready" {
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s not ready after %s", id, waitTimeout)
		}
		time.Sleep(5 * time.Millisecond) // a poll's interval: nothing is waited for by it
	}
	return id
}

// getRun inspects a run, requiring a 200.
func (a *agentProc) getRun(t testing.TB, id, runID string) api.RunInfo {
	t.Helper()
	r, err := a.Client(t).GetRunWithResponse(reqCtx(t), id, runID)
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON200 == nil {
		t.Fatalf("GET run %s of %s: %d %s", runID, id, r.StatusCode(), r.Body)
	}
	return *r.JSON200
}

// runOutput is what a read of a run's output gave.
type runOutput struct {
	status  int    // 200, or the status of a refusal
	message string // a refusal's message
	// gone is a 410's: the bytes at the offset were dropped, and the
	// first offset still kept (the agent's X-Output-First-Offset).
	gone   *client.OutputGoneError
	data   []byte // stdout and stderr in offset order
	next   int64  // the offset after the last byte read
	exit   *client.Exit
	exitAt int64 // the exit's offset: the output's end
}

// readRunOutput reads a run's output from offset over NDJSON through the
// SDK, every message checked against the contract; it stops at the end,
// or once enough bytes are read (the client goes away then).
func (a *agentProc) readRunOutput(ctx context.Context, t testing.TB, id, runID string, offset int64, follow bool, enough int) runOutput {
	t.Helper()
	return readOutput(ctx, t, a.SDK(t), id, runID, client.RunOutputOptions{Offset: offset, Follow: follow}, enough)
}

// readOutput reads a run's output over c as o says, checking that every
// offset follows the one before. A refusal is the result's status and
// message; any other error fails the test (with Errorf: it is called from
// goroutines). A reconnect, which the SDK makes when a stream breaks, is
// logged.
func readOutput(ctx context.Context, t testing.TB, c *client.Client, id, runID string, o client.RunOutputOptions, enough int) runOutput {
	t.Helper()
	out := runOutput{status: http.StatusOK, next: o.Offset}
	o.OnReconnect = func(err error) { t.Logf("output of run %s of %s: reconnecting after %v", runID, id, err) }
	for m, err := range c.RunOutput(ctx, id, runID, o) {
		var e *client.Error
		switch {
		case errors.As(err, &e):
			out.status, out.message = e.Code, e.Message
			errors.As(err, &out.gone)
			return out
		case err != nil:
			t.Errorf("output of run %s of %s from %d: %v", runID, id, o.Offset, err)
			return out
		case m.Exit != nil:
			out.exit, out.exitAt = m.Exit, m.Offset
			return out
		case m.Offset != out.next:
			t.Errorf("output of run %s of %s: a message at offset %d, want %d", runID, id, m.Offset, out.next)
			return out
		}
		out.data = append(out.data, m.Data...)
		out.next += int64(len(m.Data))
		if enough > 0 && len(out.data) >= enough {
			break
		}
	}
	return out
}

// outputStatus asks for a run's output from offset with the generated
// client and no request checks, for an offset the SDK refuses to send (a
// negative one), and returns the answer's status and error message.
func (a *agentProc) outputStatus(t testing.TB, id, runID string, offset int64) (int, string) {
	t.Helper()
	resp, err := a.RawClient(t).StreamRunOutput(reqCtx(t), id, runID, &api.StreamRunOutputParams{Offset: &offset})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.Error
	if resp.StatusCode != http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Errorf("offset %d: a %d whose body is not an Error: %v", offset, resp.StatusCode, err)
		}
	}
	return resp.StatusCode, e.Message
}

// seqOutput is what `seq 1 n` writes.
func seqOutput(n int) []byte {
	var b bytes.Buffer
	for i := 1; i <= n; i++ {
		b.WriteString(strconv.Itoa(i))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// TestDetachedRunSurvivesAndResumes: a detached run goes on once the
// client that started it is gone, and waits for input a later client
// gives; a reader that goes away and comes back with its last offset gets
// exactly the bytes after it (a few MiB, checked by SHA-256), and so does
// a read from any offset kept; offsets past the end and negative are 400s.
func TestDetachedRunSurvivesAndResumes(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("detached")})
	const n = 500000 // 3.4 MB of seq
	run := a.startDetached(t, id, true, "sh", "-c", fmt.Sprintf("read go; seq 1 %d; echo $go", n))
	if run.State != "running" || !run.Detached || run.Pid == nil || !agenttest.Deref(run.Stdin) {
		t.Fatalf("started %+v, want running, detached, a pid, stdin open", run)
	}
	// The starting client is gone; another gives the input.
	if r, err := a.Client(t).WriteRunStdinWithResponse(reqCtx(t), id, run.RunId, api.StdinRequest{Data: agenttest.Ptr([]byte("now\n")), Close: agenttest.Ptr(true)}); err != nil || r.StatusCode() != http.StatusNoContent {
		t.Fatalf("stdin: %v %v", err, r)
	}
	first := a.readRunOutput(reqCtx(t), t, id, run.RunId, 0, true, 1<<20)
	if first.status != http.StatusOK || first.exit != nil || len(first.data) < 1<<20 {
		t.Fatalf("first read: %d %s, %d bytes", first.status, first.message, len(first.data))
	}
	rest := a.readRunOutput(reqCtx(t), t, id, run.RunId, first.next, true, 0)
	if rest.exit == nil || rest.exit.Code != 0 || rest.exitAt != rest.next {
		t.Fatalf("resumed read ended %+v at %d, want exit 0 at the end", rest.exit, rest.next)
	}
	want := append(seqOutput(n), "now\n"...)
	got := append(first.data, rest.data...)
	if sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("read in two parts: %d bytes, not the %d written (SHA-256 differs)", len(got), len(want))
	}
	for _, off := range []int64{1, 777777, int64(len(want)) - 4, int64(len(want))} {
		r := a.readRunOutput(reqCtx(t), t, id, run.RunId, off, false, 0)
		if r.exit == nil || !bytes.Equal(r.data, want[off:]) {
			t.Errorf("from %d: %d bytes, exit %v; want the %d after it and the exit", off, len(r.data), r.exit, int64(len(want))-off)
		}
	}
	if r := a.readRunOutput(reqCtx(t), t, id, run.RunId, int64(len(want))+1, false, 0); r.status != http.StatusBadRequest || !strings.Contains(r.message, "offset") {
		t.Errorf("offset past the end: %d %s, want 400 naming offset", r.status, r.message)
	}
	// The SDK refuses a negative offset itself; the agent does too.
	if status, msg := a.outputStatus(t, id, run.RunId, -1); status != http.StatusBadRequest || !strings.Contains(msg, "offset") {
		t.Errorf("offset -1: %d %s, want 400 naming offset", status, msg)
	}
	if info := a.getRun(t, id, run.RunId); info.State != "exited" || info.OutputEndOffset != int64(len(want)) || info.OutputFirstOffset != 0 || info.EndedAt == nil {
		t.Errorf("ended run %+v", info)
	}
	// Runs of another sandbox are not found from this one.
	other := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("detached-other")})
	if r, err := a.Client(t).GetRunWithResponse(reqCtx(t), other, run.RunId); err != nil || r.JSON404 == nil {
		t.Errorf("a run of another sandbox: %v %d %s, want 404", err, r.StatusCode(), r.Body)
	}
	a.remove(t, other, false)
	a.remove(t, id, false)
}

// TestRunSignals: SIGINT reaches a run's process without a terminal (a
// shell's trap); an unknown signal is a 400 naming signal; a client that
// goes away from an attached run hangs it up with SIGHUP first (a trap
// writes a marker file), as a terminal would.
func TestRunSignals(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("signals")})
	run := a.startDetached(t, id, false, "sh", "-c", `trap 'echo got INT; exit 3' INT; echo ready; while :; do sleep 1; done`)
	if r := a.readRunOutput(reqCtx(t), t, id, run.RunId, 0, true, len("ready\n")); string(r.data) != "ready\n" {
		t.Fatalf("before the signal: %q", r.data)
	}
	if r, err := a.RawClient(t).SignalRunWithResponse(reqCtx(t), id, run.RunId, api.SignalRequest{Signal: "SIGNOPE"}); err != nil || r.JSON400 == nil || !strings.Contains(string(r.Body), "signal") {
		t.Errorf("an unknown signal: %v %s, want 400 naming signal", err, r.Body)
	}
	if r, err := a.Client(t).SignalRunWithResponse(reqCtx(t), id, run.RunId, api.SignalRequest{Signal: "INT"}); err != nil || r.JSON200 == nil {
		t.Fatalf("SIGINT: %v %v", err, r)
	}
	end := a.readRunOutput(reqCtx(t), t, id, run.RunId, 0, true, 0)
	if string(end.data) != "ready\ngot INT\n" || end.exit == nil || end.exit.Code != 3 {
		t.Errorf("after SIGINT: %q, exit %+v; want the trap's line and exit 3", end.data, end.exit)
	}

	// Hang-up: an attached run whose client goes away.
	ctx, cancel := context.WithCancel(reqCtx(t))
	started := make(chan struct{})
	done := make(chan runResult, 1)
	go func() {
		once := sync.OnceFunc(func() { close(started) })
		done <- a.runNDJSON(ctx, t, id, api.RunRequest{Cmd: []string{"sh", "-c", `trap 'echo hup > /tmp/hup; exit 0' HUP; echo ready; while :; do sleep 1; done`}},
			func(string, []byte) { once() })
	}()
	<-started
	runs, err := a.Client(t).ListRunsWithResponse(reqCtx(t), id)
	if err != nil || runs.JSON200 == nil {
		t.Fatal(err, runs)
	}
	var hup string
	for _, r := range runs.JSON200.Runs {
		if r.State == "running" && !r.Detached {
			hup = r.RunId
		}
	}
	cancel()
	<-done
	if hup == "" {
		t.Fatalf("the attached run is not listed: %+v", runs.JSON200.Runs)
	}
	end = a.readRunOutput(reqCtx(t), t, id, hup, 0, true, 0)
	if end.exit == nil || end.exit.Code != 0 {
		t.Errorf("the hung-up run ended %+v, want exit 0 from its trap", end.exit)
	}
	if out := a.sh(t, id, "cat /tmp/hup"); out != "hup\n" {
		t.Errorf("marker %q, want hup: SIGHUP did not come first", out)
	}
	a.remove(t, id, false)
}

// TestRunWebSocketSignal: a signal sent on the run WebSocket, through the
// SDK's RunSession, reaches the command without a terminal (a shell's
// trap answers it and exits with its own code), by either spelling, over
// the binary channel subprotocol and over the JSON messages. An unknown
// name ends the session with a 400 naming signal.
func TestRunWebSocketSignal(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("ws-signal")})
	cmd := []string{"sh", "-c", `trap 'echo got-int; exit 7' INT; trap 'echo got-term; exit 8' TERM; echo ready; while :; do sleep 0.1; done`}
	protocols := []struct {
		name string
		opts []client.Option
	}{{"channel", nil}, {"json", []client.Option{client.WithJSONWebSockets()}}}
	for _, p := range protocols {
		for _, tc := range []struct {
			signal, line string
			code         int
		}{{"INT", "got-int\n", 7}, {"SIGTERM", "got-term\n", 8}} {
			t.Run(p.name+"/"+tc.signal, func(t *testing.T) {
				s := a.readySession(t, a.SDK(t, p.opts...), id, cmd)
				if err := s.Signal(tc.signal); err != nil {
					t.Fatal(err)
				}
				var out []byte
				var exit *client.Exit
				for o, err := range s.Output() {
					if err != nil {
						t.Fatalf("after %s: %q, then %v", tc.signal, out, err)
					}
					out = append(out, o.Data...)
					exit = o.Exit
				}
				if string(out) != tc.line || exit == nil || exit.Code != tc.code {
					t.Errorf("after %s: %q, exit %+v; want %q from the trap and exit %d", tc.signal, out, exit, tc.line, tc.code)
				}
			})
		}
		t.Run(p.name+"/unknown", func(t *testing.T) {
			// A client without the contract checks, which refuse the name.
			s := a.readySession(t, a.plainSDK(t, nil, p.opts...), id, cmd)
			if err := s.Signal("SIGNOPE"); err != nil {
				t.Fatal(err)
			}
			_, err := s.Wait()
			var e *client.Error
			if !errors.As(err, &e) || e.Code != http.StatusBadRequest || !strings.Contains(e.Message, "signal") {
				t.Errorf("an unknown signal: %v, want a 400 naming signal", err)
			}
			// The session's end hangs the command up (SIGHUP, then SIGKILL
			// after a grace): it ends after the close, not with it.
			a.waitRunning(t, id, 0)
		})
	}
	a.remove(t, id, false)
}

// readySession starts cmd over c's RunSession and reads its output until
// a line "ready"; the session is closed when t ends.
func (a *agentProc) readySession(t *testing.T, c *client.Client, id string, cmd []string) *client.RunSession {
	t.Helper()
	s, err := c.RunSession(reqCtx(t), id, api.RunRequest{Cmd: cmd})
	if err != nil {
		t.Fatalf("run %q over a WebSocket: %v", cmd, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	var out []byte
	for o, err := range s.Output() {
		if err != nil || o.Exit != nil {
			t.Fatalf("before ready: %q, then %v, exit %+v", out, err, o.Exit)
		}
		if out = append(out, o.Data...); bytes.Equal(out, []byte("ready\n")) {
			return s
		}
	}
	t.Fatalf("the output ended before ready: %q", out)
	return nil
}

// TestManyRunsAtOnce: 50 runs in one sandbox at once, on an agent whose
// cap is 50. Each waits on its stdin, the gate, so all 50 are listed
// running together (the sandbox running too); a 51st, detached or
// attached, is a 409 naming the cap. Once the gate opens (a line to each
// stdin), each run gives its own output and exit, and the sandbox is ready.
func TestManyRunsAtOnce(t *testing.T) {
	t.Parallel()
	const n = 50
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "many-runs")},
		extra: []string{"--sandbox-max-runs", strconv.Itoa(n)}})
	id := a.createQuiet(t, "many-runs")
	c := a.SDK(t)
	runs := make([]api.RunInfo, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var err error
			runs[i], err = c.StartRun(reqCtx(t), id, api.RunRequest{Cmd: []string{"sh", "-c", `read gate; echo run $0 $gate; exit $0`, strconv.Itoa(i)}},
				client.StartRunOptions{Stdin: true})
			if err != nil {
				t.Errorf("start run %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	a.waitRunning(t, id, n)
	if info := a.get(t, id); info.State != "running" {
		t.Errorf("state %s with runs in progress, want running", info.State)
	}

	// Past the cap, a detached run and an attached one are refused.
	_, err := c.StartRun(reqCtx(t), id, api.RunRequest{Cmd: []string{"true"}}, client.StartRunOptions{})
	var e *client.Error
	if !errors.As(err, &e) || e.Code != http.StatusConflict || !strings.Contains(e.Message, fmt.Sprintf("%d runs in progress", n)) ||
		!strings.Contains(e.Message, "--sandbox-max-runs") {
		t.Errorf("a run past the cap: %v; want a 409 saying %d runs are in progress and naming --sandbox-max-runs", err, n)
	}
	if res := a.runNDJSON(reqCtx(t), t, id, api.RunRequest{Cmd: []string{"true"}}, nil); res.Status != http.StatusConflict || !strings.Contains(res.Message, "--sandbox-max-runs") {
		t.Errorf("an attached run past the cap: %d %s, want a 409 naming --sandbox-max-runs", res.Status, res.Message)
	}

	for i, r := range runs {
		wg.Go(func() {
			if err := c.WriteRunStdin(reqCtx(t), id, r.RunId, []byte("open\n"), true); err != nil {
				t.Errorf("open run %d's gate: %v", i, err)
				return
			}
			out := a.readRunOutput(reqCtx(t), t, id, r.RunId, 0, true, 0)
			if string(out.data) != fmt.Sprintf("run %d open\n", i) || out.exit == nil || out.exit.Code != i {
				t.Errorf("run %d: %q, exit %+v; want its line and exit %d", i, out.data, out.exit, i)
			}
		})
	}
	wg.Wait()
	list, err := c.Runs(reqCtx(t), id)
	if err != nil || len(list) != n {
		t.Fatalf("list: %v, %d runs; want the %d started", err, len(list), n)
	}
	if info := a.get(t, id); info.State != "ready" {
		t.Errorf("state %s after every run ended, want ready", info.State)
	}
	a.remove(t, id, false)
}

// waitRunning waits until GET .../runs lists n runs of id running at
// once. A run's start answers once its process has started, so this is
// usually at once; the wait only covers a slow list.
func (a *agentProc) waitRunning(t testing.TB, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		list, err := a.SDK(t).Runs(reqCtx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, r := range list {
			if r.State == "running" {
				running++
			}
		}
		if running == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d runs of %s running after %s, want %d at once: %+v", running, id, waitTimeout, n, list)
		}
		time.Sleep(10 * time.Millisecond) // a poll's interval: nothing is waited for by it
	}
}

// TestRunOutputBound: a run that writes about 1 MiB on an agent that keeps
// 64 KiB of each run's output keeps exactly the last 64 KiB, and says so:
// output_first_offset is output_end_offset less the bound, a read from 0
// is a 410 carrying that first offset (NDJSON and WebSocket alike), and a
// read from it gives exactly the bytes written last.
func TestRunOutputBound(t *testing.T) {
	t.Parallel()
	const bound = 64 << 10
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "output-bound")},
		extra: []string{"--sandbox-run-output-bytes", strconv.Itoa(bound)}})
	const id = "output-bound"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id)})
	const n = 150000
	want := seqOutput(n) // 0.9 MiB
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id), Action: agenttest.Ptr[api.EventAction]("run.exited")})
	run := a.startDetached(t, id, false, "seq", "1", strconv.Itoa(n))
	evs.until(id, "run.exited")

	info := a.getRun(t, id, run.RunId)
	end := int64(len(want))
	if info.State != "exited" || agenttest.Deref(info.ExitCode) != 0 || info.OutputEndOffset != end || info.OutputFirstOffset != end-bound {
		t.Fatalf("the run: %s, exit %v, output [%d, %d); want exited 0, output [%d, %d): the last %d bytes kept",
			info.State, info.ExitCode, info.OutputFirstOffset, info.OutputEndOffset, end-bound, end, bound)
	}
	for _, ws := range []bool{false, true} {
		o := client.RunOutputOptions{WebSocket: ws}
		gone := readOutput(reqCtx(t), t, a.SDK(t), id, run.RunId, o, 0)
		if gone.gone == nil || gone.status != http.StatusGone || gone.gone.First != end-bound || !strings.Contains(gone.message, "offset") {
			t.Errorf("WebSocket %v: from 0: %d %s (gone: %v); want a 410 naming offset, first offset %d", ws, gone.status, gone.message, gone.gone, end-bound)
		}
		o.Offset = info.OutputFirstOffset
		tail := readOutput(reqCtx(t), t, a.SDK(t), id, run.RunId, o, 0)
		if sha256.Sum256(tail.data) != sha256.Sum256(want[end-bound:]) || tail.exit == nil || tail.exit.Code != 0 || tail.exitAt != end {
			t.Errorf("WebSocket %v: from %d: %d bytes (SHA-256 equal: %v), exit %+v at %d; want the last %d bytes written, exit 0 at %d",
				ws, o.Offset, len(tail.data), bytes.Equal(tail.data, want[end-bound:]), tail.exit, tail.exitAt, bound, end)
		}
	}
	a.remove(t, id, false)
}

// TestDetachedRunAcrossRestart: the agent dies while a detached run runs.
// The restarted agent lists the run as lost (its output and exit cannot
// be known), has killed what was left of it, and the sandbox is ready.
func TestDetachedRunAcrossRestart(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(filepath.Join(suite.dir, "detached-restart")))
	const id = "detached-restart"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id)})
	run := a.startDetached(t, id, false, "sh", "-c", "echo started; exec sleep 1006")
	a.readRunOutput(reqCtx(t), t, id, run.RunId, 0, true, len("started\n"))
	a.crashAndRestart(t)
	info := a.getRun(t, id, run.RunId)
	if info.State != "lost" || info.ExitCode != nil || !info.Detached || agenttest.Deref(info.Error) == "" {
		t.Errorf("after the restart: %+v, want lost, no exit code, why", info)
	}
	if st := a.get(t, id).State; st != "ready" {
		t.Errorf("sandbox %s after the restart, want ready", st)
	}
	if ps := psArgs(t, a, id); strings.Contains(ps, "sleep 1006") {
		t.Errorf("the lost run outlived the restart:\n%s", ps)
	}
	a.remove(t, id, false)
}

// BenchmarkRunReattach: reattach to a running run's output at an offset
// near its end: the time to the first byte after the offset. It reads
// the wire itself, a raw request and the first NDJSON line, rather than
// through the SDK: the figure is the agent's time to the first byte, not
// the SDK's decoding.
func BenchmarkRunReattach(b *testing.B) {
	a := sharedAgent(b)
	id := a.create(b, api.CreateSandboxRequest{Id: agenttest.Ptr("bench-reattach")})
	run := a.startDetached(b, id, true, "sh", "-c", "seq 1 100000; cat")
	var end int64
	for end < int64(len(seqOutput(100000))) {
		end = a.getRun(b, id, run.RunId).OutputEndOffset // until seq's output is all in
	}
	hc := &http.Client{Transport: a.Transport()}
	u := fmt.Sprintf("http://agent/v1/sandboxes/%s/runs/%s/output?offset=%d&follow=true", id, run.RunId, end-7)
	b.ResetTimer()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
		if err != nil || !bytes.Contains(line, []byte(`"offset":`+strconv.FormatInt(end-7, 10))) {
			b.Fatalf("first line %q, %v", line, err)
		}
		cancel()
		resp.Body.Close()
	}
	b.StopTimer()
	a.remove(b, id, true)
}

// Benchmark100Runs: 100 detached runs of `true` started at once in one
// sandbox, until all have exited (each followed to its exit message).
// The agent is its own, with a cap of 128 runs in progress, so that none
// is refused: a 409 fails the benchmark.
func Benchmark100Runs(b *testing.B) {
	const n = 100
	a := ownAgent(b, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "bench-100-runs")},
		extra: []string{"--sandbox-max-runs", "128"}})
	id := a.createQuiet(b, "bench-100-runs")
	c := a.plainSDK(b, nil)
	for b.Loop() {
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
				defer cancel()
				run, err := c.StartRun(ctx, id, api.RunRequest{Cmd: []string{"true"}}, client.StartRunOptions{})
				if err != nil {
					b.Errorf("start: %v", err)
					return
				}
				if out := readOutput(ctx, b, c, id, run.RunId, client.RunOutputOptions{Follow: true}, 0); out.exit == nil || out.exit.Code != 0 {
					b.Errorf("run %s: %d %s, exit %+v; want exit 0", run.RunId, out.status, out.message, out.exit)
				}
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
	}
	b.StopTimer()
	a.remove(b, id, false)
}
