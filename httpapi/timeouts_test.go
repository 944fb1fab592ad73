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
	const timeout = 50 * time.Millisecond
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
