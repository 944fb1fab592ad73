package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
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
	status int
	body   string // an error's
	data   []byte // stdout and stderr in offset order
	next   int64  // the offset after the last byte read
	exit   *api.OutputMessage
}

// readRunOutput reads a run's output from offset over NDJSON, checking
// every offset follows the one before; it stops at the end, or once
// enough bytes are read (the client goes away then).
func (a *agentProc) readRunOutput(ctx context.Context, t testing.TB, id, runID string, offset int64, follow bool, enough int) runOutput {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	u := fmt.Sprintf("http://agent/v1/sandboxes/%s/runs/%s/output?offset=%d&follow=%t", id, runID, offset, follow)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: a.Transport()}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := runOutput{status: resp.StatusCode, next: offset}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	if resp.StatusCode != http.StatusOK {
		for sc.Scan() {
			out.body += sc.Text()
		}
		return out
	}
	for sc.Scan() {
		checkSchema(t, "OutputMessage", sc.Bytes())
		var m api.OutputMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if m.Stream == "exit" {
			out.exit = &m
			break
		}
		if agenttest.Deref(m.Offset) != out.next {
			t.Fatalf("a message at offset %d, want %d", agenttest.Deref(m.Offset), out.next)
		}
		out.data = append(out.data, agenttest.Deref(m.Data)...)
		out.next += int64(len(agenttest.Deref(m.Data)))
		if enough > 0 && len(out.data) >= enough {
			break
		}
	}
	return out
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
		t.Fatalf("first read: %d %s, %d bytes", first.status, first.body, len(first.data))
	}
	rest := a.readRunOutput(reqCtx(t), t, id, run.RunId, first.next, true, 0)
	if rest.exit == nil || agenttest.Deref(rest.exit.ExitCode) != 0 || agenttest.Deref(rest.exit.Offset) != rest.next {
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
	for _, off := range []int64{int64(len(want)) + 1, -1} {
		if r := a.readRunOutput(reqCtx(t), t, id, run.RunId, off, false, 0); r.status != http.StatusBadRequest || !strings.Contains(r.body, "offset") {
			t.Errorf("offset %d: %d %s, want 400 naming offset", off, r.status, r.body)
		}
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
	if string(end.data) != "ready\ngot INT\n" || end.exit == nil || agenttest.Deref(end.exit.ExitCode) != 3 {
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
	if end.exit == nil || agenttest.Deref(end.exit.ExitCode) != 0 {
		t.Errorf("the hung-up run ended %+v, want exit 0 from its trap", end.exit)
	}
	if out := a.sh(t, id, "cat /tmp/hup"); out != "hup\n" {
		t.Errorf("marker %q, want hup: SIGHUP did not come first", out)
	}
	a.remove(t, id, false)
}

// TestManyRunsAtOnce: 50 runs in one sandbox at once, each with its own
// output and exit; the sandbox is running while any runs, ready after.
func TestManyRunsAtOnce(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.createQuiet(t, "many-runs")
	gate := a.startDetached(t, id, true, "cat")
	const n = 50
	runs := make([]api.RunInfo, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { runs[i] = a.startDetached(t, id, false, "sh", "-c", fmt.Sprintf("echo run %d; exit %d", i, i)) })
	}
	wg.Wait()
	if info := a.get(t, id); info.State != "running" {
		t.Errorf("state %s with runs in progress, want running", info.State)
	}
	for i, r := range runs {
		wg.Go(func() {
			out := a.readRunOutput(reqCtx(t), t, id, r.RunId, 0, true, 0)
			if string(out.data) != fmt.Sprintf("run %d\n", i) || out.exit == nil || int(agenttest.Deref(out.exit.ExitCode)) != i {
				t.Errorf("run %d: %q, exit %+v", i, out.data, out.exit)
			}
		})
	}
	wg.Wait()
	if r, err := a.Client(t).WriteRunStdinWithResponse(reqCtx(t), id, gate.RunId, api.StdinRequest{Close: agenttest.Ptr(true)}); err != nil || r.StatusCode() != http.StatusNoContent {
		t.Fatalf("close the gate's stdin: %v %v", err, r)
	}
	a.readRunOutput(reqCtx(t), t, id, gate.RunId, 0, true, 0)
	list, err := a.Client(t).ListRunsWithResponse(reqCtx(t), id)
	if err != nil || list.JSON200 == nil || len(list.JSON200.Runs) != n+1 {
		t.Fatalf("list: %v %v", err, list)
	}
	if info := a.get(t, id); info.State != "ready" {
		t.Errorf("state %s after every run ended, want ready", info.State)
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
// near its end: the time to the first byte after the offset.
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

// Benchmark100Runs: 100 runs started at once in one sandbox, until all
// have exited (each followed to its exit message).
func Benchmark100Runs(b *testing.B) {
	a := sharedAgent(b)
	id := a.createQuiet(b, "bench-100-runs")
	hc := &http.Client{Transport: a.Transport()}
	var retries atomic.Int64
	for b.Loop() {
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() {
				body, _ := json.Marshal(api.RunRequest{Cmd: []string{"true"}})
				ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/sandboxes/"+id+"/runs", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				for err == nil && resp.StatusCode == http.StatusConflict {
					// Past the cap of runs in progress (64 by default): the
					// next start goes once one has ended.
					resp.Body.Close()
					retries.Add(1)
					req, _ = http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/sandboxes/"+id+"/runs", bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					resp, err = hc.Do(req)
				}
				if err != nil {
					b.Error(err)
					return
				}
				var info api.RunInfo
				err = json.NewDecoder(resp.Body).Decode(&info)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusCreated {
					b.Errorf("start: %d %v", resp.StatusCode, err)
					return
				}
				if out := a.readRunOutput(ctx, b, id, info.RunId, 0, true, 0); out.exit == nil {
					b.Errorf("run %s: no exit", info.RunId)
				}
			})
		}
		wg.Wait()
	}
	b.ReportMetric(float64(retries.Load())/float64(b.N), "409-retries/op")
	b.StopTimer()
	a.remove(b, id, false)
}
