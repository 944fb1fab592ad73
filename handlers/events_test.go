package handlers_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/events"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// eventsServer serves /v1/events over a real journal on disk with size
// events kept.
func eventsServer(t *testing.T, size int) (*events.Journal, string) {
	t.Helper()
	j, err := events.Open(events.Config{Dir: t.TempDir(), Size: size})
	if err != nil {
		t.Fatal(err)
	}
	return j, serveEvents(t, j)
}

// serveEvents serves j's /v1/events through the router; the journal is
// closed with the server.
func serveEvents(tb testing.TB, j *events.Journal) string {
	logger := slog.New(slog.DiscardHandler)
	a := handlers.New(handlers.Config{
		Logger: logger,
		Events: func(context.Context) (handlers.EventJournal, error) { return j, nil },
	})
	srv := httptest.NewServer(httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: logger, Registerer: prometheus.NewRegistry()}))
	tb.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		_ = j.Close()
	})
	return srv.URL
}

func publish(j *events.Journal, n int) {
	for i := range n {
		j.Append(events.Event{SandboxID: []string{"a", "b"}[i%2], Action: "ready"})
	}
}

// get sends a GET with headers (name, value pairs) and bounds a hang.
func get(t *testing.T, url string, headers ...string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

type wireEvent struct {
	Seq       uint64 `json:"seq"`
	SandboxID string `json:"sandbox_id"`
	Action    string `json:"action"`
	Timestamp int64  `json:"timestamp"`
}

func TestEventsNDJSONReplaysThenFollows(t *testing.T) {
	j, url := eventsServer(t, 100)
	publish(j, 4) // seqs 1..4: a b a b
	resp := get(t, url+"/v1/events?after=1&id=a")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	dec := json.NewDecoder(resp.Body)
	publish(j, 2) // seqs 5, 6: a b
	for _, want := range []uint64{3, 5} {
		var ev wireEvent
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("waiting for seq %d: %v", want, err)
		}
		if ev.Seq != want || ev.SandboxID != "a" || ev.Action != "ready" || ev.Timestamp == 0 {
			t.Errorf("got %+v, want a's seq %d", ev, want)
		}
	}
}

// sseEvents reads n Server-Sent Events: their ids and data.
func sseEvents(t *testing.T, body io.Reader, n int) (ids []string, data []wireEvent) {
	t.Helper()
	sc := bufio.NewScanner(body)
	var id string
	for len(ids) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			var ev wireEvent
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev); err != nil {
				t.Fatalf("data %q: %v", line, err)
			}
			ids, data = append(ids, id), append(data, ev)
		case line == "":
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	if len(ids) < n {
		t.Fatalf("the stream ended after %d events (%v), want %d", len(ids), sc.Err(), n)
	}
	return ids, data
}

func TestEventsSSEHonoursLastEventID(t *testing.T) {
	j, url := eventsServer(t, 100)
	publish(j, 5)
	// Last-Event-ID wins over ?after=: an EventSource reconnects to its
	// first URL with the header set.
	resp := get(t, url+"/v1/events?after=0", "Accept", "text/event-stream", "Last-Event-ID", "3")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ids, data := sseEvents(t, resp.Body, 2)
	for i, want := range []uint64{4, 5} {
		if ids[i] != strconv.FormatUint(want, 10) || data[i].Seq != want {
			t.Errorf("event %d: id %s, seq %d; want %d", i, ids[i], data[i].Seq, want)
		}
	}
}

func TestEventsWebSocketReplays(t *testing.T) {
	j, url := eventsServer(t, 100)
	publish(j, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/v1/events?after=1&action=ready", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.CloseNow() }()
	for _, want := range []uint64{2, 3} {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ev wireEvent
		if err := json.Unmarshal(msg, &ev); err != nil || typ != websocket.MessageText || ev.Seq != want {
			t.Errorf("message %q (%v, %v), want a text message with seq %d", msg, typ, err, want)
		}
	}
}

func TestEventsSeqErrors(t *testing.T) {
	j, url := eventsServer(t, 4)
	publish(j, 10) // 7..10 kept
	for _, tc := range []struct {
		query   string
		headers []string
		status  int
		says    []string
	}{
		{"after=abc", nil, 400, []string{`"after"`, `"abc"`, "whole number"}},
		{"after=-1", nil, 400, []string{`query parameter "after"`, `"-1"`}},
		{"after=1.5", nil, 400, []string{`"after"`, `"1.5"`}},
		{"after=11", nil, 400, []string{`query parameter "after"`, "10"}},
		{"", []string{"Last-Event-ID", "garbage"}, 400, []string{`header "Last-Event-ID"`, `"garbage"`}},
		{"after=5", nil, 410, []string{`query parameter "after"`, "7"}},
		{"", []string{"Last-Event-ID", "2"}, 410, []string{`header "Last-Event-ID"`, "7"}},
		{"", []string{"Accept", "application/xml"}, 406, []string{`header "Accept"`, "text/event-stream"}},
		{"", []string{"Accept", "text/event-stream;q=0"}, 406, []string{`header "Accept"`}},
	} {
		resp := get(t, url+"/v1/events?"+tc.query, tc.headers...)
		var e httpapi.Error
		err := json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode != tc.status || err != nil || e.Code != tc.status {
			t.Errorf("%s %v: status %d, body %+v (%v); want %d", tc.query, tc.headers, resp.StatusCode, e, err, tc.status)
			continue
		}
		for _, s := range tc.says {
			if !strings.Contains(e.Message, s) {
				t.Errorf("%s %v: message %q does not say %s", tc.query, tc.headers, e.Message, s)
			}
		}
		if tc.status == http.StatusGone && resp.Header.Get(handlers.OldestSeqHeader) != "7" {
			t.Errorf("%s %v: %s %q, want 7", tc.query, tc.headers, handlers.OldestSeqHeader, resp.Header.Get(handlers.OldestSeqHeader))
		}
	}
	// The oldest kept, asked for from just before it, is no gap.
	resp := get(t, url+"/v1/events?after=6")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("after=6: status %d, want 200", resp.StatusCode)
	}
}

func TestEventsAcceptNegotiation(t *testing.T) {
	_, url := eventsServer(t, 10)
	for accept, want := range map[string]string{
		"":                     "application/x-ndjson",
		"*/*":                  "application/x-ndjson",
		"application/*":        "application/x-ndjson",
		"application/x-ndjson": "application/x-ndjson",
		"text/event-stream":    "text/event-stream",
		"application/xml, text/event-stream;q=0.5":      "text/event-stream",
		"application/x-ndjson;q=0.2, text/event-stream": "text/event-stream",
	} {
		var headers []string
		if accept != "" {
			headers = []string{"Accept", accept}
		}
		resp := get(t, url+"/v1/events", headers...)
		if got := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || got != want {
			t.Errorf("Accept %q: %d %q, want 200 %q", accept, resp.StatusCode, got, want)
		}
	}
}

func TestEventsJournalUnavailable(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	a := handlers.New(handlers.Config{
		Logger: logger,
		Events: func(context.Context) (handlers.EventJournal, error) {
			return nil, errors.New("event journal: /x/next-seq holds \"hello\"")
		},
	})
	srv := httptest.NewServer(httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: logger, Registerer: prometheus.NewRegistry()}))
	defer srv.Close()
	resp := get(t, srv.URL+"/v1/events")
	var e httpapi.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != 503 || !strings.Contains(e.Message, "next-seq") {
		t.Errorf("status %d, %+v (%v); want 503 with the reason", resp.StatusCode, e, err)
	}
}
