package client_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

// runOutput is a fake output endpoint over a run's output: data, sent in
// messages of chunk bytes, the streams alternating, then the exit. Each
// connection is answered by the next of plan. A connection's first
// message starts overlap bytes before the offset asked (the client must
// drop what it yielded before), as a server that sends whole pieces
// could.
type runOutput struct {
	t       *testing.T
	data    []byte
	chunk   int
	overlap int64
	plan    []outputStep

	mu      sync.Mutex
	offsets []string // each connection's offset
	follows []string // and its follow
}

type outputStep struct {
	status int   // an answer instead of a stream
	first  int64 // the X-Output-First-Offset of a 410
	count  int   // messages to send before the drop; -1: all and the exit
	kill   bool  // cut the connection instead of ending the stream
	torn   bool  // with kill: half of the next message is sent before the cut
	code   int   // over a WebSocket, the close code of the drop (0: normal)
	gap    int64 // the first message starts this far past the offset
}

// message is an output message as the agent encodes it; every seventh
// is encoded by encoding/json, in another field order.
func outputMessage(i int, off int64, data []byte) string {
	stream := []string{"stdout", "stderr"}[i%2]
	if i%7 == 3 {
		b, _ := json.Marshal(map[string]any{"stream": stream, "data": data, "offset": off})
		return string(b)
	}
	return fmt.Sprintf(`{"stream":%q,"data":%q,"offset":%d}`, stream, base64.StdEncoding.EncodeToString(data), off)
}

func (f *runOutput) messages(from int64, s outputStep) []string {
	from = max(from-f.overlap, 0) + s.gap
	var msgs []string
	for off := from; off < int64(len(f.data)); off += int64(f.chunk) {
		end := min(off+int64(f.chunk), int64(len(f.data)))
		msgs = append(msgs, outputMessage(len(msgs), off, f.data[off:end]))
	}
	msgs = append(msgs, fmt.Sprintf(`{"stream":"exit","exit_code":130,"done":true,"run_id":"r-1","signal":"SIGINT","offset":%d}`, len(f.data)))
	if s.count >= 0 {
		msgs = msgs[:min(s.count, len(msgs))]
	}
	return msgs
}

func (f *runOutput) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f.mu.Lock()
	n := len(f.offsets)
	f.offsets = append(f.offsets, q.Get("offset"))
	f.follows = append(f.follows, q.Get("follow"))
	f.mu.Unlock()
	if r.URL.Path != "/v1/sandboxes/box/runs/r-1/output" || n >= len(f.plan) {
		f.t.Errorf("connection %d to %s: not planned", n, r.URL)
		writeError(w, http.StatusTeapot, "not planned")
		return
	}
	s := f.plan[n]
	if s.status != 0 {
		writePlanned(w, s.status, "X-Output-First-Offset", s.first)
		return
	}
	from, _ := strconv.ParseInt(q.Get("offset"), 10, 64)
	msgs := f.messages(from, s)
	if r.Header.Get("Upgrade") != "" {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			f.t.Error(err)
			return
		}
		for _, m := range msgs {
			_ = c.Write(r.Context(), websocket.MessageText, []byte(m))
		}
		if s.kill {
			_ = c.CloseNow()
			return
		}
		_ = c.Close(max(websocket.StatusCode(s.code), websocket.StatusNormalClosure), "planned")
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	for _, m := range msgs {
		_, _ = io.WriteString(w, m+"\n")
	}
	if s.torn {
		all := f.messages(from, outputStep{count: -1})
		_, _ = io.WriteString(w, all[len(msgs)][:len(all[len(msgs)])/2])
	}
	if s.kill {
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // cuts the connection, the chunked body unended
	}
}

func newRunOutput(t *testing.T, size int, plan ...outputStep) *runOutput {
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	return &runOutput{t: t, data: data, chunk: 1000, overlap: 100, plan: plan}
}

// readAll reads a run's output and checks that each piece starts where
// the last ended.
func readAll(t *testing.T, seq func(func(client.Output, error) bool), from int64) (data []byte, exit *client.Output, err error) {
	t.Helper()
	next := from
	for o, e := range seq {
		switch {
		case e != nil:
			err = e
		case o.Exit != nil:
			exit = &o
		default:
			if o.Offset != next {
				t.Errorf("a piece at offset %d after the bytes up to %d", o.Offset, next)
			}
			next += int64(len(o.Data))
			data = append(data, o.Data...)
		}
	}
	return data, exit, err
}

// TestRunOutputResume: a stream cut mid-stream (a line cut in half too,
// an abrupt close, a going-away close) is resumed from the offset after
// the last byte yielded, and every byte comes exactly once.
func TestRunOutputResume(t *testing.T) {
	for _, ws := range []bool{false, true} {
		t.Run(fmt.Sprintf("websocket=%v", ws), func(t *testing.T) {
			f := newRunOutput(t, 64<<10,
				outputStep{count: 5, kill: true, torn: true},
				outputStep{count: 7, kill: !ws, code: int(websocket.StatusGoingAway)},
				outputStep{status: http.StatusServiceUnavailable},
				outputStep{count: -1},
			)
			c := serve(t, f)
			var reconnects []error
			data, exit, err := readAll(t, c.RunOutput(testCtx(t), "box", "r-1", client.RunOutputOptions{
				Follow: true, WebSocket: ws, MinBackoff: time.Millisecond,
				OnReconnect: func(err error) { reconnects = append(reconnects, err) },
			}), 0)
			if err != nil || !bytes.Equal(data, f.data) {
				t.Fatalf("%d bytes, %v; want the %d bytes of the output", len(data), err, len(f.data))
			}
			if exit == nil || exit.Exit.Code != 130 || exit.Exit.Signal != "SIGINT" || exit.RunID != "r-1" || exit.Offset != int64(len(f.data)) {
				t.Errorf("exit %+v", exit)
			}
			// 5 messages from 0; then 7 from 5000-100, the first 100 bytes seen.
			if want := []string{"0", "5000", "11900", "11900"}; !slices.Equal(f.offsets, want) {
				t.Errorf("offsets asked %q, want %q", f.offsets, want)
			}
			if slices.ContainsFunc(f.follows, func(s string) bool { return s != "true" }) || len(reconnects) != 3 {
				t.Errorf("follow %q, reconnects %v", f.follows, reconnects)
			}
		})
	}
}

// TestRunOutputFrom: a read from an offset inside a piece starts there.
func TestRunOutputFrom(t *testing.T) {
	f := newRunOutput(t, 10<<10, outputStep{count: -1})
	c := serve(t, f)
	data, exit, err := readAll(t, c.RunOutput(testCtx(t), "box", "r-1", client.RunOutputOptions{Offset: 4321}), 4321)
	if err != nil || exit == nil || !bytes.Equal(data, f.data[4321:]) {
		t.Errorf("%d bytes, %+v, %v", len(data), exit, err)
	}
	if f.follows[0] != "" {
		t.Errorf("follow=%q without Follow", f.follows[0])
	}
	if _, _, err := readAll(t, c.RunOutput(testCtx(t), "box", "r-1", client.RunOutputOptions{Offset: -1}), 0); err == nil || !strings.Contains(err.Error(), "offset -1") {
		t.Errorf("a negative offset: %v", err)
	}
}

// TestRunOutputNow: without Follow, a stream that ends cleanly before an
// exit is all that is kept now: no error, no reconnect.
func TestRunOutputNow(t *testing.T) {
	f := newRunOutput(t, 10<<10, outputStep{count: 3})
	c := serve(t, f)
	data, exit, err := readAll(t, c.RunOutput(testCtx(t), "box", "r-1", client.RunOutputOptions{}), 0)
	if err != nil || exit != nil || !bytes.Equal(data, f.data[:3000]) || len(f.offsets) != 1 {
		t.Errorf("%d bytes, %+v, %v, %d connections", len(data), exit, err, len(f.offsets))
	}
}

// TestRunOutputGone: a reader that fell behind (a clean end while
// following, or a 4410 close) asks again and gets the 410 as an
// *OutputGoneError with the first offset kept.
func TestRunOutputGone(t *testing.T) {
	for _, ws := range []bool{false, true} {
		f := newRunOutput(t, 10<<10,
			outputStep{count: 2, code: 4410},
			outputStep{status: http.StatusGone, first: 3000},
		)
		c := serve(t, f)
		data, _, err := readAll(t, c.RunOutput(testCtx(t), "box", "r-1", client.RunOutputOptions{Follow: true, WebSocket: ws, MinBackoff: time.Millisecond}), 0)
		var g *client.OutputGoneError
		var e *client.Error
		if !errors.As(err, &g) || g.First != 3000 || !errors.As(err, &e) || e.Code != 410 || !strings.Contains(err.Error(), "offset 3000") {
			t.Errorf("websocket=%v: %v, want an *OutputGoneError at 3000", ws, err)
		}
		if !bytes.Equal(data, f.data[:2000]) || !slices.Equal(f.offsets, []string{"0", "2000"}) {
			t.Errorf("websocket=%v: %d bytes, offsets %q", ws, len(data), f.offsets)
		}
	}
}

// TestRunOutputRefused: a 4xx ends the stream at once; a gap in the
// offsets breaks the contract.
func TestRunOutputRefused(t *testing.T) {
	f := newRunOutput(t, 10<<10, outputStep{status: http.StatusNotFound})
	_, _, err := readAll(t, serve(t, f).RunOutput(testCtx(t), "box", "r-1", client.RunOutputOptions{Follow: true}), 0)
	var e *client.Error
	if !errors.As(err, &e) || e.Code != 404 || len(f.offsets) != 1 {
		t.Errorf("%v after %d connections, want the 404 after one", err, len(f.offsets))
	}
	f = newRunOutput(t, 10<<10, outputStep{count: -1, gap: 200})
	f.overlap = 0
	_, _, err = readAll(t, serve(t, f).RunOutput(testCtx(t), "box", "r-1", client.RunOutputOptions{Follow: true}), 0)
	if err == nil || !strings.Contains(err.Error(), "lost") || len(f.offsets) != 1 {
		t.Errorf("a gap: %v", err)
	}
}

// runsAPI is a fake of the run endpoints that records what it was sent.
type runsAPI struct {
	mu    sync.Mutex
	got   []string // method, path, query and body of each request
	stdin []byte
}

func (a *runsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	defer a.mu.Unlock()
	if strings.HasSuffix(r.URL.Path, "/stdin") {
		var req api.StdinRequest
		_ = json.Unmarshal(body, &req)
		if req.Data != nil {
			a.stdin = append(a.stdin, *req.Data...)
		}
		if len(body) > 1<<20 {
			writeError(w, http.StatusRequestEntityTooLarge, "over 1 MiB")
			return
		}
		a.got = append(a.got, fmt.Sprintf("%s %s close=%v", r.Method, r.URL.Path, req.Close != nil && *req.Close))
		w.WriteHeader(http.StatusNoContent)
		return
	}
	a.got = append(a.got, strings.TrimSpace(fmt.Sprintf("%s %s %s", r.Method, r.URL.RequestURI(), body)))
	info := `{"run_id":"r-1","sandbox_id":"box","cmd":["sleep","9"],"state":"running","detached":true,"started_at":1,"output_first_offset":0,"output_end_offset":0}`
	w.Header().Set("Content-Type", "application/json")
	switch {
	case strings.HasSuffix(r.URL.Path, "/signal") && strings.Contains(string(body), "BOGUS"):
		writeError(w, http.StatusBadRequest, `"signal": unknown`)
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/runs"):
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, info)
	case strings.HasSuffix(r.URL.Path, "/runs"):
		_, _ = io.WriteString(w, `{"runs":[`+info+`]}`)
	default:
		_, _ = io.WriteString(w, info)
	}
}

func TestRuns(t *testing.T) {
	a := &runsAPI{}
	c := serve(t, a)
	ctx := testCtx(t)
	run, err := c.StartRun(ctx, "box", api.RunRequest{Cmd: []string{"sleep", "9"}}, client.StartRunOptions{Stdin: true})
	if err != nil || run.RunId != "r-1" || run.State != api.RunStateRunning {
		t.Fatalf("start: %+v, %v", run, err)
	}
	if list, err := c.Runs(ctx, "box"); err != nil || len(list) != 1 || list[0].RunId != "r-1" {
		t.Errorf("runs: %+v, %v", list, err)
	}
	if run, err := c.GetRun(ctx, "box", "r-1"); err != nil || run.RunId != "r-1" {
		t.Errorf("get: %+v, %v", run, err)
	}
	if run, err := c.SignalRun(ctx, "box", "r-1", "SIGINT"); err != nil || run.RunId != "r-1" {
		t.Errorf("signal: %+v, %v", run, err)
	}
	var e *client.Error
	if _, err := c.SignalRun(ctx, "box", "r-1", "BOGUS"); !errors.As(err, &e) || e.Code != 400 {
		t.Errorf("a bad signal: %v, want a 400 *Error", err)
	}
	// Over the agent's 1 MiB body limit once encoded: sent in pieces.
	in := bytes.Repeat([]byte("0123456789abcdef"), 80<<10)
	if err := c.WriteRunStdin(ctx, "box", "r-1", in, true); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRunStdin(ctx, "box", "r-1", nil, true); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	const stdin = "POST /v1/sandboxes/box/runs/r-1/stdin"
	want := []string{
		`POST /v1/sandboxes/box/runs?stdin=true {"cmd":["sleep","9"]}`,
		`GET /v1/sandboxes/box/runs`,
		`GET /v1/sandboxes/box/runs/r-1`,
		`POST /v1/sandboxes/box/runs/r-1/signal {"signal":"SIGINT"}`,
		`POST /v1/sandboxes/box/runs/r-1/signal {"signal":"BOGUS"}`,
		stdin + " close=false", stdin + " close=false", stdin + " close=true",
		stdin + " close=true",
	}
	if !slices.Equal(a.got, want) {
		t.Errorf("the agent got\n%s\nwant\n%s", strings.Join(a.got, "\n"), strings.Join(want, "\n"))
	}
	if !bytes.Equal(a.stdin, in) {
		t.Errorf("stdin: %d bytes arrived of %d", len(a.stdin), len(in))
	}
}

// TestRunStart: a run with detach_on_disconnect announces its id first.
func TestRunStart(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, `{"stream":"start","run_id":"r-9"}`+"\n"+runLines[0]+"\n"+
			`{"stream":"exit","exit_code":143,"done":true,"run_id":"r-9","signal":"SIGTERM"}`+"\n")
	}))
	var got []client.Output
	for o, err := range c.Run(testCtx(t), "box", api.RunRequest{Cmd: []string{"x"}, DetachOnDisconnect: new(true)}) {
		if err != nil {
			t.Fatal(err)
		}
		o.Data = bytes.Clone(o.Data) // valid until the next iteration
		got = append(got, o)
	}
	if len(got) != 3 || got[0].Stream != "start" || got[0].RunID != "r-9" || string(got[1].Data) != "hello\n" ||
		got[2].RunID != "r-9" || got[2].Exit.Code != 143 || got[2].Exit.Signal != "SIGTERM" {
		t.Errorf("%+v", got)
	}
}

// TestExecSignal: Signal sends a signal message.
func TestExecSignal(t *testing.T) {
	got := make(chan string, 2)
	c := serve(t, wsHandler(t, func(ctx context.Context, c *websocket.Conn) {
		for range 2 {
			_, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			got <- string(msg)
		}
		_ = c.Write(ctx, websocket.MessageText, []byte(`{"stream":"exit","done":true,"exit_code":130,"signal":"SIGINT"}`))
		_ = c.Close(websocket.StatusNormalClosure, "")
	}))
	s, err := c.Exec(testCtx(t), "box", api.ExecInit{Cmd: []string{"sleep", "9"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Signal("SIGINT"); err != nil {
		t.Fatal(err)
	}
	exit, err := s.Wait()
	if err != nil || exit.Code != 130 || exit.Signal != "SIGINT" {
		t.Errorf("wait: %+v, %v", exit, err)
	}
	if init, sig := <-got, <-got; init != `{"init":{"cmd":["sleep","9"]}}` || sig != `{"signal":"SIGINT"}` {
		t.Errorf("the server got %s then %s", init, sig)
	}
}
