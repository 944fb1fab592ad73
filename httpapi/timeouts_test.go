package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// bodyAPI decodes POST /v1/ping's body, then holds the response open
// until the client goes away or hold ends, and says which on held.
type bodyAPI struct {
	api.Unimplemented
	hold    time.Duration
	decoded chan struct{}
	held    chan string
}

func (b *bodyAPI) PostPing(w http.ResponseWriter, r *http.Request) {
	var req api.PingRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	close(b.decoded)
	select {
	case <-r.Context().Done():
		b.held <- "canceled"
	case <-time.After(b.hold):
		b.held <- "held"
		httpapi.WriteJSON(w, http.StatusOK, api.PingResponse{Message: "pong"})
	}
}

// ExecInSandbox is a WebSocket endpoint that echoes one message.
func (b *bodyAPI) ExecInSandbox(w http.ResponseWriter, r *http.Request, _ api.SandboxID) {
	c := httpapi.AcceptWebSocket(w, r)
	if c == nil {
		return
	}
	defer func() { _ = c.CloseNow() }()
	typ, msg, err := c.Read(r.Context())
	if err == nil {
		_ = c.Write(r.Context(), typ, msg)
	}
}

func newBodyServer(t *testing.T, timeout time.Duration) (*httptest.Server, *bodyAPI) {
	t.Helper()
	a := &bodyAPI{hold: 10 * timeout, decoded: make(chan struct{}), held: make(chan string, 1)}
	srv := httptest.NewServer(httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer: prometheus.NewRegistry(), BodyReadTimeout: timeout}))
	t.Cleanup(srv.Close)
	return srv, a
}

// TestBodyThatTricklesIsCutOff: a body that stops coming is answered 408
// once the body timeout passes, rather than holding the connection.
func TestBodyThatTricklesIsCutOff(t *testing.T) {
	srv, _ := newBodyServer(t, 100*time.Millisecond)
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Bounds only a hang: the server answers after 100 ms.
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(conn, "POST /v1/ping HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"mess")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e httpapi.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestTimeout || e.Code != 408 || !strings.Contains(e.Message, "did not arrive in time") {
		t.Errorf("got %d %+v, want a JSON 408", resp.StatusCode, e)
	}
}

// TestBodyTimeoutEndsWithTheBody: once the body is read, the timeout no
// longer applies, so a response that streams for longer is not cut (the
// server would cancel the request when its connection's read timed out).
func TestBodyTimeoutEndsWithTheBody(t *testing.T) {
	const timeout = 500 * time.Millisecond
	srv, a := newBodyServer(t, timeout)
	resp, err := http.Post(srv.URL+"/v1/ping", "application/json", strings.NewReader(`{"message":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-a.decoded
	if got := <-a.held; got != "held" {
		t.Errorf("the request was %s past the body timeout; want it held", got)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d", resp.StatusCode)
	}
}

// TestWebSocketErrorsAreJSON: a WebSocket endpoint asked without the
// handshake, or with a broken one, answers in the API's error shape.
func TestWebSocketErrorsAreJSON(t *testing.T) {
	srv, _ := newBodyServer(t, time.Minute)
	resp, err := http.Get(srv.URL + "/v1/sandboxes/box-1/exec")
	if err != nil {
		t.Fatal(err)
	}
	assertJSONError(t, resp, http.StatusUpgradeRequired, "connect with a WebSocket client")
	if resp.Header.Get("Upgrade") != "websocket" {
		t.Errorf("426 without Upgrade: websocket: %v", resp.Header)
	}

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/sandboxes/box-1/exec", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "not a key")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	assertJSONError(t, resp, http.StatusBadRequest, "Sec-WebSocket-Key")

	// A real handshake still works.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/v1/sandboxes/box-1/exec", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.CloseNow() }()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || string(msg) != "hi" {
		t.Errorf("echo: %q, %v", msg, err)
	}
}

func assertJSONError(t *testing.T, resp *http.Response, code int, inMsg string) {
	t.Helper()
	defer resp.Body.Close()
	var e httpapi.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("status %d: body is not the error shape: %v", resp.StatusCode, err)
	}
	if resp.StatusCode != code || e.Code != code || !strings.Contains(e.Message, inMsg) {
		t.Errorf("got %d %+v, want %d with %q", resp.StatusCode, e, code, inMsg)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q, want application/json", ct)
	}
}

// uploadAPI reads POST /v1/ping's body raw, as an upload handler does,
// and answers how many bytes came, or why they stopped.
type uploadAPI struct{ api.Unimplemented }

func (uploadAPI) PostPing(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		httpapi.WriteError(w, http.StatusRequestTimeout, fmt.Sprintf("after %d bytes: %v", n, err))
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, api.PingResponse{Message: fmt.Sprint(n)})
}

// TestStreamedBodies: a body the router is told is a stream (an upload)
// is not held to the 1 MiB of JSON, but still may not stall past the body
// timeout; every other body keeps the cap.
func TestStreamedBodies(t *testing.T) {
	stalled := make(chan struct{})
	defer close(stalled)
	for _, tc := range []struct {
		name    string
		stream  bool
		timeout time.Duration
		body    io.Reader
		status  int
		says    string
	}{
		{"an upload of 3 MiB", true, time.Minute, strings.NewReader(strings.Repeat("x", 3<<20)), 200, fmt.Sprint(3 << 20)},
		{"JSON of 3 MiB", false, time.Minute, strings.NewReader(strings.Repeat("x", 3<<20)), 413, "1 MiB"},
		{"an upload that stalls", true, 100 * time.Millisecond, io.MultiReader(strings.NewReader("abc"), stall(stalled)), 408, "after 3 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(httpapi.NewRouter(httpapi.RouterConfig{API: uploadAPI{}, Logger: slog.New(slog.DiscardHandler),
				Registerer: prometheus.NewRegistry(), BodyReadTimeout: tc.timeout,
				StreamedBody: func(*http.Request) bool { return tc.stream }}))
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/ping", tc.body)
			if sr, ok := tc.body.(*strings.Reader); ok {
				req.ContentLength = int64(sr.Len())
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.says) {
				t.Errorf("got %d %s, want %d saying %q", resp.StatusCode, body, tc.status, tc.says)
			}
		})
	}
}

// stall is a body that brings no more bytes until it is closed.
type stall chan struct{}

func (s stall) Read([]byte) (int, error) {
	<-s
	return 0, io.EOF
}
