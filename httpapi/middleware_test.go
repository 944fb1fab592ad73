package httpapi

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestValidTraceIDIsTheContractsPattern: the hand-written check accepts
// what the pattern ^[A-Za-z0-9._:/+=-]{1,128}$ accepts, and only that.
func TestValidTraceIDIsTheContractsPattern(t *testing.T) {
	pattern := regexp.MustCompile(`^[A-Za-z0-9._:/+=-]{1,128}$`)
	cases := []string{"", "a", "trace-abc-123", "t:1/2+3=4.5_6", strings.Repeat("x", 128), strings.Repeat("x", 129),
		"bad id", "bad\nid", "é", "a\x00", "tab\t", "a,b", "a;b", `"q"`}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := "Az09._:/+=- \n\t,;\"é\x00\x7f"
	for range 5000 {
		b := make([]byte, rng.IntN(140))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		cases = append(cases, string(b))
	}
	for _, id := range cases {
		if got, want := validTraceID(id), pattern.MatchString(id); got != want {
			t.Errorf("validTraceID(%q) = %v, the pattern says %v", id, got, want)
		}
	}
}

// TestMadeTraceIDs: an id the agent makes is 32 lowercase hex digits,
// never the same twice, and one router's differ from another's (the
// agent's next run) at the same count.
func TestMadeTraceIDs(t *testing.T) {
	ids, other := newTraceIDs(), newTraceIDs()
	seen := map[string]bool{}
	for range 10000 {
		id := ids.next()
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("made trace id %q, want 32 lowercase hex digits", id)
		}
		if seen[id] {
			t.Fatalf("trace id %s made twice", id)
		}
		seen[id] = true
	}
	if o := other.next(); seen[o] || o[:16] == ids.next()[:16] {
		t.Errorf("two routers share a trace id prefix: %s", o)
	}
}

// requestLines returns the access log lines among the JSON log lines.
func requestLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	return logLines(t, logs, "request")
}

// TestAccessLogLevels: at the agent's default level (info) ping, the
// probes and the scrape leave no access log line; any other request
// leaves one with its trace id (a POST to /v1/ping too: it can set the
// clock), and a 5xx on a quiet path is an error line all the same.
func TestAccessLogLevels(t *testing.T) {
	var logs lockedWriter
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c := serveUnix(t, NewRouter(RouterConfig{API: probeAPI{}, Logger: logger, Registerer: prometheus.NewRegistry()}))
	for _, path := range []string{"/v1/ping", "/livez", "/healthz"} {
		do(t, c, http.MethodGet, "http://agent"+path, nil)
	}
	do(t, c, http.MethodGet, "http://agent/readyz", nil) // probeAPI has none: a 501
	do(t, c, http.MethodGet, "http://agent/nowhere", http.Header{TraceHeader: {"t-404"}})
	do(t, c, http.MethodPost, "http://agent/v1/ping", nil)

	lines := requestLines(t, logs.String())
	if len(lines) != 3 {
		t.Fatalf("%d access log lines, want 3 (the 501, the 404 and the POST):\n%s", len(lines), logs.String())
	}
	if l := lines[2]; l["path"] != "/v1/ping" || l["method"] != "POST" || l["level"] != "INFO" {
		t.Errorf("the POST ping: %v, want an info line", l)
	}
	if l := lines[0]; l["path"] != "/readyz" || l["level"] != "ERROR" || l["status"] != float64(501) {
		t.Errorf("the probe's 501: %v, want an error line", l)
	}
	if l := lines[1]; l["path"] != "/nowhere" || l["level"] != "INFO" || l["route"] != "unmatched" || l["trace_id"] != "t-404" {
		t.Errorf("the 404: %v, want an info line with its trace id", l)
	}
}

type probeAPI struct{ okAPI }

func (probeAPI) GetLivez(w http.ResponseWriter, _ *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (probeAPI) GetHealthz(w http.ResponseWriter, _ *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// TestRequestLoggerCarriesTheTraceID: what a handler logs through Logger,
// from the request's context or one made from it, carries the request's
// trace id, and Logger gives every caller of one request the same logger.
func TestRequestLoggerCarriesTheTraceID(t *testing.T) {
	var logs lockedWriter
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	h := NewRouter(RouterConfig{API: loggingAPI{}, Logger: logger, Registerer: prometheus.NewRegistry()})
	c := serveUnix(t, h)
	resp, _ := do(t, c, http.MethodGet, "http://agent/v1/ping", http.Header{TraceHeader: {"t-log"}})
	if resp.Header.Get(TraceHeader) != "t-log" {
		t.Errorf("echoed %q, want t-log", resp.Header.Get(TraceHeader))
	}
	if !strings.Contains(logs.String(), `"msg":"handler says","trace_id":"t-log","same":true`) {
		t.Errorf("the handler's line lacks the trace id:\n%s", logs.String())
	}
	if Logger(t.Context(), logger) != logger || TraceID(t.Context()) != "" {
		t.Error("outside a request, Logger is not the fallback or TraceID is not empty")
	}
}

type loggingAPI struct{ okAPI }

func (loggingAPI) GetPing(w http.ResponseWriter, r *http.Request) {
	l := Logger(r.Context(), nil)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	l.Info("handler says", "same", Logger(ctx, nil) == l)
	WriteJSON(w, http.StatusOK, map[string]string{"message": "pong"})
}

// TestOddMethodsShareOneSeries: a method HTTP does not define is counted
// as "other", so a client cannot make a series of each word it sends.
func TestOddMethodsShareOneSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.DiscardHandler)
	c := serveUnix(t, NewRouter(RouterConfig{API: okAPI{}, Logger: logger, Registerer: reg}))
	for _, m := range []string{"BREW", "WHEN", http.MethodGet, http.MethodGet} {
		do(t, c, m, "http://agent/v1/ping", nil)
	}
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]uint64{}
	for _, mf := range got {
		if mf.GetName() != "arcbox_agent_http_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			series[strings.Join(labels, ",")] = m.GetHistogram().GetSampleCount()
		}
	}
	if len(series) != 2 || series["code=200,method=GET,route=/v1/ping"] != 2 || series["code=405,method=other,route=unmatched"] != 2 {
		t.Errorf("series %v, want GET /v1/ping 200 twice and other unmatched 405 twice", series)
	}
}

// TestWantsWebSocket: an upgrade is asked for by a token "websocket" of
// the Upgrade headers, in any letter case, alone or in a list.
func TestWantsWebSocket(t *testing.T) {
	for _, tt := range []struct {
		upgrade []string
		want    bool
	}{
		{[]string{"websocket"}, true},
		{[]string{"WebSocket"}, true},
		{[]string{"h2c, websocket"}, true},
		{[]string{"h2c", " WEBSOCKET "}, true},
		{nil, false},
		{[]string{"h2c"}, false},
		{[]string{"websockets"}, false},
	} {
		r := httptest.NewRequest(http.MethodGet, "/v1/events", nil)
		for _, v := range tt.upgrade {
			r.Header.Add("Upgrade", v)
		}
		if got := WantsWebSocket(r); got != tt.want {
			t.Errorf("Upgrade %q: %v, want %v", tt.upgrade, got, tt.want)
		}
	}
}
