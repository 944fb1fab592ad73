package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// streamAPI answers with each kind of response the agent has: JSON (ping),
// NDJSON (run), SSE (events, held open until release), a WebSocket (exec)
// and a followed text log (runtime logs); /metrics is reg's.
type streamAPI struct {
	api.Unimplemented
	reg     *prometheus.Registry
	sent    chan struct{} // the SSE stream's first event is out
	release chan struct{} // ends the SSE stream
}

func (a *streamAPI) GetPing(w http.ResponseWriter, _ *http.Request) {
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"message": "pong"})
}

// ShutdownSystem answers one JSON document and flushes it, as the real one
// does before it begins: a flushed answer that is one document is no
// stream.
func (a *streamAPI) ShutdownSystem(w http.ResponseWriter, _ *http.Request) {
	httpapi.WriteJSON(w, http.StatusAccepted, map[string]any{"action": "poweroff", "grace_seconds": 0})
	http.NewResponseController(w).Flush()
}

func (a *streamAPI) RunInSandbox(w http.ResponseWriter, _ *http.Request, id api.SandboxID) {
	if id == "missing" {
		httpapi.WriteError(w, http.StatusNotFound, "no sandbox missing")
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	rc := http.NewResponseController(w)
	for _, line := range []string{`{"stream":"stdout","data":"aGk="}`, `{"stream":"exit","exit_code":0,"done":true}`} {
		_, _ = io.WriteString(w, line+"\n")
		_ = rc.Flush()
	}
}

func (a *streamAPI) StreamEvents(w http.ResponseWriter, r *http.Request, _ api.StreamEventsParams) {
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, "id: 1\ndata: {}\n\n")
	_ = http.NewResponseController(w).Flush()
	close(a.sent)
	select {
	case <-a.release:
	case <-r.Context().Done():
	}
}

func (a *streamAPI) ExecInSandbox(w http.ResponseWriter, r *http.Request, _ api.SandboxID) {
	c := httpapi.AcceptWebSocket(w, r)
	if c == nil {
		return
	}
	_ = c.Write(r.Context(), websocket.MessageText, []byte(`{"stream":"exit","exit_code":0,"done":true}`))
	_ = c.Close(websocket.StatusNormalClosure, "")
}

func (a *streamAPI) GetRuntimeLogs(w http.ResponseWriter, _ *http.Request, _ api.GetRuntimeLogsParams) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "containerd started\n")
	_ = http.NewResponseController(w).Flush()
}

func (a *streamAPI) GetMetrics(w http.ResponseWriter, r *http.Request) {
	promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// metricsText scrapes srv's /metrics.
func metricsText(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	_, text := get(t, srv, http.MethodGet, "/metrics", "")
	return text
}

// get reads the whole answer to a GET or POST of path.
func get(t *testing.T, srv *httptest.Server, method, path string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestStreamsLeaveTheLatencyHistogram serves one response of each kind on
// a real server and checks where each is observed: plain requests (errors
// of stream routes included) in the request histogram, streams in the
// stream series, by route pattern and kind; and that Prometheus' linter
// finds nothing to say about them. Before any request, every stream route's
// series are there at zero.
func TestStreamsLeaveTheLatencyHistogram(t *testing.T) {
	promtool := testenv.RequireBinary(t, "promtool")
	reg := prometheus.NewPedanticRegistry()
	a := &streamAPI{reg: reg, sent: make(chan struct{}), release: make(chan struct{})}
	srv := httptest.NewServer(httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: slog.New(slog.DiscardHandler), Registerer: reg}))
	defer srv.Close()

	start := metricsText(t, srv)
	checkStreamSeriesAtZero(t, start)
	promtoolCheck(t, promtool, start)

	if code, _ := get(t, srv, http.MethodGet, "/v1/ping", ""); code != 200 {
		t.Fatalf("ping: %d", code)
	}
	if code, body := get(t, srv, http.MethodPost, "/v1/sandboxes/box-1/run", `{"cmd":["echo"]}`); code != 200 || strings.Count(body, "\n") != 2 {
		t.Fatalf("run: %d %q", code, body)
	}
	if code, _ := get(t, srv, http.MethodPost, "/v1/sandboxes/missing/run", `{"cmd":["echo"]}`); code != 404 {
		t.Fatalf("run of a missing sandbox: %d, want 404", code)
	}
	if code, _ := get(t, srv, http.MethodGet, "/v1/sandboxes/box-1/exec", ""); code != http.StatusUpgradeRequired {
		t.Fatalf("exec without an upgrade: %d, want 426", code)
	}
	if code, _ := get(t, srv, http.MethodPost, "/v1/system/shutdown", `{"action":"poweroff"}`); code != http.StatusAccepted {
		t.Fatalf("shutdown: %d", code)
	}
	if code, body := get(t, srv, http.MethodGet, "/v1/runtime/logs?service=containerd&follow=true", ""); code != 200 || body != "containerd started\n" {
		t.Fatalf("logs: %d %q", code, body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // only a hang
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/v1/sandboxes/box-1/exec", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.Read(ctx); err != nil || !strings.Contains(string(msg), `"done":true`) {
		t.Fatalf("exec message %q, %v", msg, err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("exec end: %v, want a normal closure", err)
	}

	// An SSE subscription, open while the metrics are scraped.
	resp, err := http.Get(srv.URL + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "id: 1\n" {
		t.Fatalf("events: %q, %v", line, err)
	}
	<-a.sent
	open := metricsText(t, srv)
	if !strings.Contains(open, `arcbox_agent_http_streams_open{route="/v1/events"} 1`) {
		t.Errorf("an open SSE stream is not counted open:\n%s", open)
	}
	close(a.release)
	_, _ = io.Copy(io.Discard, resp.Body)

	// The WebSocket's handler may still be returning after its close
	// reached the client: wait for its figures, bounded only against a hang.
	var text string
	if !agenttest.WaitFor(time.Minute, func() bool {
		text = metricsText(t, srv)
		return strings.Contains(text, `arcbox_agent_http_streams_open{route="/v1/sandboxes/{id}/exec"} 0`) &&
			strings.Contains(text, `arcbox_agent_http_streams_open{route="/v1/events"} 0`)
	}) {
		t.Fatalf("streams still open after a minute:\n%s", text)
	}
	for _, want := range []string{
		`arcbox_agent_http_request_duration_seconds_count{code="200",method="GET",route="/v1/ping"} 1`,
		`arcbox_agent_http_request_duration_seconds_count{code="404",method="POST",route="/v1/sandboxes/{id}/run"} 1`,
		`arcbox_agent_http_request_duration_seconds_count{code="426",method="GET",route="/v1/sandboxes/{id}/exec"} 1`,
		`arcbox_agent_http_request_duration_seconds_count{code="202",method="POST",route="/v1/system/shutdown"} 1`,
		`arcbox_agent_http_streams_total{kind="ndjson",route="/v1/sandboxes/{id}/run"} 1`,
		`arcbox_agent_http_streams_total{kind="sse",route="/v1/events"} 1`,
		`arcbox_agent_http_streams_total{kind="websocket",route="/v1/sandboxes/{id}/exec"} 1`,
		`arcbox_agent_http_streams_total{kind="text",route="/v1/runtime/logs"} 1`,
		`arcbox_agent_http_stream_duration_seconds_count{kind="ndjson",route="/v1/sandboxes/{id}/run"} 1`,
		`arcbox_agent_http_stream_duration_seconds_count{kind="sse",route="/v1/events"} 1`,
		`arcbox_agent_http_stream_duration_seconds_count{kind="websocket",route="/v1/sandboxes/{id}/exec"} 1`,
		`arcbox_agent_http_stream_duration_seconds_count{kind="text",route="/v1/runtime/logs"} 1`,
		`arcbox_agent_http_streams_open{route="/v1/sandboxes/{id}/run"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "arcbox_agent_http_request_duration_seconds") {
			continue
		}
		if strings.Contains(line, `code="200",method="POST",route="/v1/sandboxes/{id}/run"`) ||
			strings.Contains(line, `code="101"`) || strings.Contains(line, `route="/v1/events"`) ||
			strings.Contains(line, `route="/v1/runtime/logs"`) {
			t.Errorf("a stream is in the request histogram: %s", line)
		}
	}
	promtoolCheck(t, promtool, text)
}

// checkStreamSeriesAtZero checks a scrape taken before any request: every
// route of the contract whose answer may be a stream (api.StreamRoutes,
// generated from openapi.yaml with the routing) has its open gauge, and a
// counter and a histogram for each kind its answer can be, all at zero.
func checkStreamSeriesAtZero(t *testing.T, text string) {
	t.Helper()
	kindOf := map[string]string{"application/x-ndjson": "ndjson", "text/event-stream": "sse", "text/plain": "text"}
	want := map[string]bool{}
	for _, r := range api.StreamRoutes {
		want[fmt.Sprintf(`arcbox_agent_http_streams_open{route=%q} 0`, r.Pattern)] = true
		var kinds []string
		if r.Upgrade {
			kinds = append(kinds, "websocket")
		}
		for _, mt := range r.MediaTypes {
			kind, ok := kindOf[mt]
			if !ok {
				t.Errorf("%s %s streams %s, a media type this test does not know: add its kind", r.Method, r.Pattern, mt)
			}
			kinds = append(kinds, kind)
		}
		for _, kind := range kinds {
			want[fmt.Sprintf(`arcbox_agent_http_streams_total{kind=%q,route=%q} 0`, kind, r.Pattern)] = true
			want[fmt.Sprintf(`arcbox_agent_http_stream_duration_seconds_count{kind=%q,route=%q} 0`, kind, r.Pattern)] = true
		}
	}
	// The table is generated: these say it is not empty or short.
	for _, known := range []string{
		`arcbox_agent_http_streams_total{kind="ndjson",route="/v1/sandboxes/{id}/run"} 0`,
		`arcbox_agent_http_streams_total{kind="websocket",route="/v1/sandboxes/{id}/run"} 0`,
		`arcbox_agent_http_streams_total{kind="websocket",route="/v1/sandboxes/{id}/exec"} 0`,
		`arcbox_agent_http_streams_total{kind="ndjson",route="/v1/events"} 0`,
		`arcbox_agent_http_streams_total{kind="sse",route="/v1/events"} 0`,
		`arcbox_agent_http_streams_total{kind="websocket",route="/v1/events"} 0`,
		`arcbox_agent_http_streams_total{kind="text",route="/v1/runtime/logs"} 0`,
	} {
		if !want[known] {
			t.Errorf("api.StreamRoutes does not give %s", known)
		}
	}
	lines := strings.Split(text, "\n")
	for w := range want {
		if !slices.Contains(lines, w) {
			t.Errorf("before any request, metrics lack %s", w)
		}
	}
	// A stream series at start is one of those, at zero.
	for _, line := range lines {
		if strings.HasPrefix(line, "arcbox_agent_http_stream") && !strings.HasSuffix(line, " 0") {
			t.Errorf("before any request: %s", line)
		}
	}
}

// promtoolCheck runs text through `promtool check metrics`, which must
// find nothing to say.
func promtoolCheck(t *testing.T, promtool, text string) {
	t.Helper()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
