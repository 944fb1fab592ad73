package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

// The fakes here stand in for the agent; the e2e suites drive the real one.

// serve runs h on a unix socket and returns a client of it.
func serve(t *testing.T, h http.Handler, opts ...client.Option) *client.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := client.New("unix://"+sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Trace-Id", "trace-1")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": code, "message": msg})
}

// TestNewAddresses: New takes an address of each scheme and refuses a
// bad one naming it (internal/agentaddr tests the reading in full).
func TestNewAddresses(t *testing.T) {
	for _, good := range []string{"unix:///run/arcbox/agent.sock", "tcp://127.0.0.1:8080", "vsock://3:1024"} {
		if _, err := client.New(good); err != nil {
			t.Errorf("New(%q): %v", good, err)
		}
	}
	for _, bad := range []string{"", "http://127.0.0.1:80", "vsock://3:0"} {
		if _, err := client.New(bad); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("agent address %q", bad)) {
			t.Errorf("New(%q): %v; want an error naming it", bad, err)
		}
	}
}

// TestErrors: an answer outside 2xx is an *Error, from a stream and from
// a generated call (through Check), with the token and trace id sent and
// the token in no error.
func TestErrors(t *testing.T) {
	var mu sync.Mutex
	var auth, trace []string
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		trace = append(trace, r.Header.Get("X-Trace-Id"))
		mu.Unlock()
		switch r.URL.Path {
		case "/v1/sandboxes/box/run":
			writeError(w, http.StatusConflict, `sandbox "box" is running`)
		case "/v1/sandboxes/box":
			writeError(w, http.StatusNotFound, `no sandbox "box"`)
		default:
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not json\n")
		}
	}), client.WithToken("s3cret"), client.WithTraceID("mine"))
	ctx := testCtx(t)

	for _, err := range c.Run(ctx, "box", api.RunRequest{Cmd: []string{"true"}}) {
		var e *client.Error
		if !errors.As(err, &e) || e.Code != 409 || e.Message != `sandbox "box" is running` || e.TraceID != "trace-1" {
			t.Errorf("run: %#v, want the 409 as an *Error", err)
		}
	}
	_, err := client.Check(c.API().GetSandboxWithResponse(ctx, "box"))
	var e *client.Error
	if !errors.As(err, &e) || e.Code != 404 || e.Message != `no sandbox "box"` || e.TraceID != "trace-1" {
		t.Errorf("get: %#v, want the 404 as an *Error", err)
	}
	for _, err := range c.RuntimeLogs(ctx, "dockerd", client.LogsOptions{}) {
		if !errors.As(err, &e) || e.Code != 503 || e.Message != "not json" {
			t.Errorf("logs: %#v, want the 503 with its text", err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("the error %q shows the token", err)
		}
	}
	r, err := client.Check(c.API().GetPingWithResponse(ctx))
	if !errors.As(err, &e) || r == nil || r.StatusCode() != 503 {
		t.Errorf("ping: %v, %v; want the answer and its error", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range auth {
		if auth[i] != "Bearer s3cret" || trace[i] != "mine" {
			t.Errorf("request %d: Authorization %q, X-Trace-Id %q", i, auth[i], trace[i])
		}
	}
}

// runLines is what the fake run answers: output on both streams, one
// message not in the agent's own encoding, then the exit.
var runLines = []string{
	`{"stream":"stdout","data":"aGVsbG8K"}`,
	`{"data":"b29wcw==","stream":"stderr"}`,
	`{"stream":"exit","done":true,"exit_code":3,"truncated":["stdout"],"message":"stdout was cut"}`,
}

func collect(t *testing.T, seq func(func(client.Output, error) bool)) (stdout, stderr string, exit *client.Exit, err error) {
	t.Helper()
	for o, e := range seq {
		switch {
		case e != nil:
			err = e
		case o.Exit != nil:
			exit = o.Exit
		case o.Stream == "stdout":
			stdout += string(o.Data)
		default:
			stderr += string(o.Data)
		}
	}
	return
}

func TestRunNDJSON(t *testing.T) {
	var body []byte
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/x-ndjson")
		lines := runLines
		if strings.Contains(string(body), "cut") {
			lines = lines[:2]
		}
		for _, l := range lines {
			_, _ = io.WriteString(w, l+"\n")
		}
	}))
	ctx := testCtx(t)
	var seen []string
	stdout, stderr, exit, err := collect(t, c.Run(ctx, "box", api.RunRequest{Cmd: []string{"echo", "hello"}}))
	if err != nil || stdout != "hello\n" || stderr != "oops" || exit == nil || exit.Code != 3 ||
		!slices.Equal(exit.Truncated, []string{"stdout"}) || exit.Message != "stdout was cut" {
		t.Errorf("run: %q %q %+v %v", stdout, stderr, exit, err)
	}
	if string(body) != `{"cmd":["echo","hello"]}` {
		t.Errorf("the request body was %s", body)
	}

	obs := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, runLines[0]+"\n")
	}), client.WithObserver(func(schema string, msg []byte) { seen = append(seen, schema+" "+string(msg)) }))
	_, _, exit, err = collect(t, obs.Run(ctx, "box", api.RunRequest{Cmd: []string{"cut"}}))
	if exit != nil || !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "without an exit message") {
		t.Errorf("a stream cut before its exit: %+v, %v; want an unexpected EOF", exit, err)
	}
	if !slices.Equal(seen, []string{"OutputMessage " + runLines[0] + "\n"}) {
		t.Errorf("the observer saw %q", seen)
	}
}

func TestRunNDJSONContract(t *testing.T) {
	for _, lines := range [][]string{
		{`{"stream":"stdout"}`},
		{`{"stream":"stdout","data":"eA==","exit_code":0}`},
		{`{"stream":"exit","exit_code":0}`},
		{`{"stream":"tty","data":"eA=="}`},
		{`not json`},
		{runLines[2], runLines[0]},
	} {
		c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = io.WriteString(w, strings.Join(lines, "\n")+"\n")
		}))
		if _, _, _, err := collect(t, c.Run(testCtx(t), "box", api.RunRequest{Cmd: []string{"x"}})); err == nil {
			t.Errorf("%q: no error", lines)
		}
	}
}

// wsHandler accepts a WebSocket and hands it to serve.
func wsHandler(t *testing.T, serve func(ctx context.Context, c *websocket.Conn)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		defer func() { _ = c.CloseNow() }()
		serve(r.Context(), c)
	})
}

func TestRunWS(t *testing.T) {
	var req []byte
	c := serve(t, wsHandler(t, func(ctx context.Context, c *websocket.Conn) {
		_, req, _ = c.Read(ctx)
		if strings.Contains(string(req), "busy") {
			_ = c.Close(4409, "another run holds the sandbox")
			return
		}
		for _, l := range runLines {
			_ = c.Write(ctx, websocket.MessageText, []byte(l))
		}
		_ = c.Close(websocket.StatusNormalClosure, "")
	}))
	ctx := testCtx(t)
	stdout, stderr, exit, err := collect(t, c.RunWS(ctx, "box", api.RunRequest{Cmd: []string{"x"}}))
	if err != nil || stdout != "hello\n" || stderr != "oops" || exit == nil || exit.Code != 3 {
		t.Errorf("run: %q %q %+v %v", stdout, stderr, exit, err)
	}
	if string(req) != `{"cmd":["x"]}` {
		t.Errorf("the first message was %s", req)
	}
	_, _, exit, err = collect(t, c.RunWS(ctx, "box", api.RunRequest{Cmd: []string{"busy"}}))
	var e *client.Error
	if exit != nil || !errors.As(err, &e) || e.Code != 409 || e.Message != "another run holds the sandbox" || !e.Closed {
		t.Errorf("a close with 4409: %+v, %#v; want a 409 *Error", exit, err)
	}

	refused := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, `no sandbox "box"`)
	}))
	_, _, _, err = collect(t, refused.RunWS(ctx, "box", api.RunRequest{Cmd: []string{"x"}}))
	if !errors.As(err, &e) || e.Code != 404 || e.Closed {
		t.Errorf("a refused upgrade: %#v, want a 404 *Error", err)
	}
}

func TestExecSession(t *testing.T) {
	var got []string
	c := serve(t, wsHandler(t, func(ctx context.Context, c *websocket.Conn) {
		for {
			_, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			got = append(got, string(msg))
			var m api.ExecClientMessage
			if err := json.Unmarshal(msg, &m); err != nil {
				t.Error(err)
				return
			}
			switch {
			case m.Stdin != nil:
				out, _ := json.Marshal(api.OutputMessage{Stream: "stdout", Data: m.Stdin})
				_ = c.Write(ctx, websocket.MessageText, out)
			case m.CloseStdin != nil:
				_ = c.Write(ctx, websocket.MessageText, []byte(`{"stream":"exit","done":true,"exit_code":0}`))
				_ = c.Close(websocket.StatusNormalClosure, "")
				return
			}
		}
	}))
	ctx := testCtx(t)
	s, err := c.Exec(ctx, "box", api.ExecInit{Cmd: []string{"cat"}, Tty: new(bool)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := io.WriteString(s, "hello\n"); err != nil {
		t.Fatal(err)
	}
	for o, err := range s.Output() {
		if err != nil || string(o.Data) != "hello\n" {
			t.Fatalf("echo: %+v, %v", o, err)
		}
		break
	}
	if err := s.Resize(132, 43); err != nil {
		t.Fatal(err)
	}
	if err := s.Resize(0, 43); err == nil || !strings.Contains(err.Error(), "width and height") {
		t.Errorf("resize to 0 columns: %v", err)
	}
	if err := s.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	exit, err := s.Wait()
	if err != nil || exit.Code != 0 {
		t.Fatalf("wait: %+v, %v", exit, err)
	}
	if exit, err := s.Wait(); err != nil || exit.Code != 0 {
		t.Errorf("wait again: %+v, %v", exit, err)
	}
	want := []string{`{"init":{"cmd":["cat"],"tty":false}}`, `{"stdin":"aGVsbG8K"}`, `{"resize":{"height":43,"width":132}}`, `{"close_stdin":true}`}
	if !slices.Equal(got, want) {
		t.Errorf("the server got %q, want %q", got, want)
	}
}

func TestRuntimeLogs(t *testing.T) {
	var query url.Values
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.Query()
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "one\ntwo\nthree, not ended")
	}))
	var lines []string
	for l, err := range c.RuntimeLogs(testCtx(t), "dockerd", client.LogsOptions{Tail: 5, Follow: true}) {
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	if !slices.Equal(lines, []string{"one", "two", "three, not ended"}) {
		t.Errorf("lines %q", lines)
	}
	if want := (url.Values{"follow": {"true"}, "service": {"dockerd"}, "tail": {"5"}}); !maps.EqualFunc(query, want, slices.Equal) {
		t.Errorf("query %q", query)
	}
}

// TestRunWSContext: ending ctx while the loop is paused (not reading)
// closes the socket, so the agent ends the command at once.
func TestRunWSContext(t *testing.T) {
	gone := make(chan error, 1)
	c := serve(t, wsHandler(t, func(ctx context.Context, c *websocket.Conn) {
		_, _, _ = c.Read(ctx)
		_ = c.Write(ctx, websocket.MessageText, []byte(runLines[0]))
		_, _, err := c.Read(ctx) // the client sends nothing more
		gone <- err
	}))
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	for _, err := range c.RunWS(ctx, "box", api.RunRequest{Cmd: []string{"sleep"}}) {
		if err != nil {
			t.Fatal(err)
		}
		cancel() // and the loop does not read on
		select {
		case err := <-gone:
			if err == nil {
				t.Error("the server read a message, want the socket closed")
			}
		case <-time.After(time.Minute):
			t.Fatal("the socket is still open a minute after ctx ended")
		}
		break
	}
}
