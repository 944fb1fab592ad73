package handlers_test

import (
	"context"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// The fake's runs: one run, r-1 of any sandbox but "other", which has
// written "out" and "err" and exited 130 (SIGINT); its output begins at
// offset 10 (the bytes before were dropped). In box-1 it ends at 16; in
// the others (the contract test's) it reaches every offset the contract
// allows, so that none is past its end.
const fakeRunOutputFirst = 10

func (f *fakeSandboxes) fakeRun(id, runID string) (sandbox.RunInfo, error) {
	if f.err != nil {
		return sandbox.RunInfo{}, f.err
	}
	if id == "other" {
		return sandbox.RunInfo{}, sandbox.Errorf(sandbox.ErrNotFound, "run %q of sandbox %q", runID, id)
	}
	code := 130
	end := int64(fakeRunOutputFirst + 6)
	if id != "box-1" {
		end = math.MaxInt64
	}
	return sandbox.RunInfo{ID: runID, SandboxID: id, Cmd: []string{"sleep", "9"}, State: sandbox.RunExited, Pid: 7,
		StartedAt: time.Unix(100, 0), EndedAt: time.Unix(105, 0), ExitCode: &code, Signal: "SIGINT",
		OutputFirst: fakeRunOutputFirst, OutputEnd: end}, nil
}

func (f *fakeSandboxes) StartRun(id string, req sandbox.RunRequest) (sandbox.RunInfo, error) {
	if f.err != nil {
		return sandbox.RunInfo{}, f.err
	}
	f.runs = append(f.runs, req.Process)
	return sandbox.RunInfo{ID: "r-1", SandboxID: id, Cmd: req.Process.Cmd, Detached: true, State: sandbox.RunRunning, Pid: 7,
		StartedAt: time.Unix(100, 0), Stdin: req.Stdin}, nil
}

func (f *fakeSandboxes) Runs(id string) ([]sandbox.RunInfo, error) {
	r, err := f.fakeRun(id, "r-1")
	return []sandbox.RunInfo{r}, err
}

func (f *fakeSandboxes) GetRun(id, runID string) (sandbox.RunInfo, error) {
	return f.fakeRun(id, runID)
}

func (f *fakeSandboxes) ReadRunOutput(_ context.Context, id, runID string, offset int64, _ bool, fn func([]sandbox.OutputChunk) error) (sandbox.RunInfo, error) {
	info, err := f.fakeRun(id, runID)
	if err == nil {
		err = sandbox.CheckOutputOffset(info, offset)
	}
	if err != nil {
		return sandbox.RunInfo{}, err
	}
	chunks := []sandbox.OutputChunk{
		{Stream: sandbox.StreamStdout, Offset: fakeRunOutputFirst, Data: []byte("out")},
		{Stream: sandbox.StreamStderr, Offset: fakeRunOutputFirst + 3, Data: []byte("err")},
	}
	var from []sandbox.OutputChunk
	for _, c := range chunks {
		if end := c.Offset + int64(len(c.Data)); end > offset {
			if c.Offset < offset {
				c.Data, c.Offset = c.Data[offset-c.Offset:], offset
			}
			from = append(from, c)
		}
	}
	if len(from) > 0 {
		if err := fn(from); err != nil {
			return sandbox.RunInfo{}, err
		}
	}
	return info, nil
}

func (f *fakeSandboxes) SignalRun(_ context.Context, id, runID string, _ sandbox.Signal) error {
	_, err := f.fakeRun(id, runID)
	return err
}

func (f *fakeSandboxes) WriteRunStdin(_ context.Context, id, runID string, _ []byte, _ bool) error {
	_, err := f.fakeRun(id, runID)
	return err
}

func TestRunsEndpoints(t *testing.T) {
	h := newHarness(t, false)
	h.sandboxes = &fakeSandboxes{}
	c := &http.Client{Transport: &apitest.Transport{T: t, SkipRequestValidation: true}}
	do := func(method, path, body string) (int, string, http.Header) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, h.url+path, rd)
		must(t, err)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.Do(req)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, tc := range []struct {
		method, path, body string
		status             int
		has                string
	}{
		{"POST", "/v1/sandboxes/box-1/runs?stdin=true", `{"cmd":["cat"]}`, 201, `"stdin":true`},
		{"GET", "/v1/sandboxes/box-1/runs", "", 200, `"signal":"SIGINT"`},
		{"GET", "/v1/sandboxes/box-1/runs/r-1", "", 200, `"exit_code":130`},
		{"GET", "/v1/sandboxes/other/runs/r-1", "", 404, `run \"r-1\" of sandbox \"other\"`},
		{"POST", "/v1/sandboxes/box-1/runs/r-1/signal", `{"signal":"INT"}`, 200, `"run_id":"r-1"`},
		{"POST", "/v1/sandboxes/box-1/runs/r-1/signal", `{"signal":"SIGNOPE"}`, 400, `signal`},
		{"POST", "/v1/sandboxes/box-1/runs/r-1/signal", `{"signal":"9"}`, 400, `signal`},
		{"POST", "/v1/sandboxes/box-1/runs/r-1/stdin", `{"data":"aGk=","close":true}`, 204, ``},
		{"GET", "/v1/sandboxes/box-1/runs/r-1/output?offset=12", "", 200, `{"stream":"stdout","data":"dA==","offset":12}`},
		{"GET", "/v1/sandboxes/box-1/runs/r-1/output?offset=16&follow=true", "", 200, `{"stream":"exit","exit_code":130,"done":true,"run_id":"r-1","signal":"SIGINT","offset":16}`},
		{"GET", "/v1/sandboxes/box-1/runs/r-1/output?offset=17", "", 400, `"offset\": 17 is past the end`},
		{"GET", "/v1/sandboxes/box-1/runs/r-1/output?offset=-1", "", 400, `offset`},
		{"GET", "/v1/sandboxes/box-1/runs/r-1/output?offset=3", "", 410, `begins at offset 10`},
	} {
		status, body, hdr := do(tc.method, tc.path, tc.body)
		if status != tc.status || !strings.Contains(body, tc.has) {
			t.Errorf("%s %s: %d %s; want %d with %s", tc.method, tc.path, status, body, tc.status, tc.has)
		}
		if status == 410 && hdr.Get("X-Output-First-Offset") != "10" {
			t.Errorf("410 without X-Output-First-Offset: 10: %v", hdr)
		}
	}

	// The WebSocket gives the same messages.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.url, "http")+"/v1/sandboxes/box-1/runs/r-1/output?offset=11&follow=true", nil)
	must(t, err)
	defer func() { _ = ws.CloseNow() }()
	var got []string
	for {
		_, b, err := ws.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Errorf("closed with %v, want 1000", err)
			}
			break
		}
		if err := apitest.ValidateJSON(t, "OutputMessage", b); err != nil {
			t.Errorf("message %s: %v", b, err)
		}
		got = append(got, string(b))
	}
	want := []string{`{"stream":"stdout","data":"dXQ=","offset":11}`, `{"stream":"stderr","data":"ZXJy","offset":13}`,
		`{"stream":"exit","exit_code":130,"done":true,"run_id":"r-1","signal":"SIGINT","offset":16}`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("WebSocket messages\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
