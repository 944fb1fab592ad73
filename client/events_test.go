package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

// journal is a fake events endpoint over a journal of seqs 1 to last.
// Each connection is answered by the next of plan: a status, or events
// then a drop (kill: the connection is cut mid-stream; else it ends
// cleanly, or over a WebSocket closes with 4410).
type journal struct {
	t    *testing.T
	last int64
	plan []step

	mu     sync.Mutex
	afters []string // each connection's after, "" for none
}

type step struct {
	status int   // an answer instead of a stream
	count  int   // events to send before the drop
	kill   bool  // cut the connection instead of ending the stream
	torn   bool  // with kill: half of the next event is sent before the cut
	oldest int64 // the X-Event-Oldest-Seq of a 410
}

// writePlanned answers a planned refusal with status, and header set to
// value unless it is 0.
func writePlanned(w http.ResponseWriter, status int, header string, value int64) {
	if value != 0 {
		w.Header().Set(header, strconv.FormatInt(value, 10))
	}
	writeError(w, status, "planned")
}

func event(seq int64) string {
	return fmt.Sprintf(`{"seq":%d,"sandbox_id":"box","action":"created","timestamp":%d}`, seq, seq)
}

func (j *journal) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	j.mu.Lock()
	n := len(j.afters)
	j.afters = append(j.afters, r.URL.Query().Get("after"))
	j.mu.Unlock()
	if n >= len(j.plan) {
		<-r.Context().Done() // nothing more happens
		return
	}
	s := j.plan[n]
	if s.status != 0 {
		writePlanned(w, s.status, "X-Event-Oldest-Seq", s.oldest)
		return
	}
	from := int64(1)
	if a := r.URL.Query().Get("after"); a != "" {
		after, _ := strconv.ParseInt(a, 10, 64)
		from = after + 1
	}
	var msgs []string
	for seq := from; seq <= j.last && len(msgs) < s.count; seq++ {
		msgs = append(msgs, event(seq))
	}
	if r.Header.Get("Upgrade") != "" {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			j.t.Error(err)
			return
		}
		for _, m := range msgs {
			_ = c.Write(r.Context(), websocket.MessageText, []byte(m))
		}
		_ = c.Close(4410, "fell behind")
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	for _, m := range msgs {
		_, _ = w.Write([]byte(m + "\n"))
	}
	if next := event(from + int64(len(msgs))); s.torn {
		_, _ = w.Write([]byte(next[:len(next)/2]))
	}
	if s.kill {
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		conn, _, err := rc.Hijack()
		if err != nil {
			j.t.Error(err)
			return
		}
		_ = conn.Close()
	}
}

// asked is each connection's after so far.
func (j *journal) asked() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.afters)
}

// read takes want events from c's Events, and the seqs it yielded.
func read(t *testing.T, c *client.Client, o client.EventsOptions, want int) ([]int64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o.MinBackoff = time.Millisecond
	var seqs []int64
	for ev, err := range c.Events(ctx, o) {
		if err != nil {
			return seqs, err
		}
		if ev.SandboxId != "box" || ev.Action != "created" {
			t.Errorf("event %+v", ev)
		}
		seqs = append(seqs, ev.Timestamp) // the fake's timestamp is the seq
		if len(seqs) == want {
			break
		}
	}
	return seqs, nil
}

func seqs(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// TestEventsResume: a stream that is refused with a 503, cut mid-stream
// and ended cleanly is resumed each time from the last seq yielded: every
// event once, in order.
func TestEventsResume(t *testing.T) {
	j := &journal{t: t, last: 9, plan: []step{
		{status: http.StatusServiceUnavailable},
		{count: 3, kill: true},
		{count: 2},
		{status: http.StatusBadGateway},
		{count: 100},
	}}
	c := serve(t, j)
	var drops, connects int
	got, err := read(t, c, client.EventsOptions{After: new(int64), OnConnect: func() { connects++ }, OnReconnect: func(error) { drops++ }}, 9)
	if err != nil || !slices.Equal(got, seqs(1, 9)) {
		t.Errorf("events %v, %v; want 1 to 9 once each", got, err)
	}
	if want := []string{"0", "0", "3", "5", "5"}; !slices.Equal(j.asked(), want) || drops != 4 || connects != 3 {
		t.Errorf("connections asked after %q with %d reconnects and %d answered, want %q, 4 and 3", j.asked(), drops, connects, want)
	}
}

// TestEventsTornLine: a connection cut in the middle of an event's line
// yields no half event: the reconnect brings it whole.
func TestEventsTornLine(t *testing.T) {
	j := &journal{t: t, last: 5, plan: []step{{count: 2, kill: true, torn: true}, {count: 100}}}
	observed := 0
	c := serve(t, j, client.WithObserver(func(_ string, msg []byte) {
		observed++
		if !json.Valid(msg) {
			t.Errorf("observed a message that is not JSON: %q", msg)
		}
	}))
	got, err := read(t, c, client.EventsOptions{After: new(int64)}, 5)
	if err != nil || !slices.Equal(got, seqs(1, 5)) || observed != 5 {
		t.Errorf("events %v, %v, %d observed; want 1 to 5 once each", got, err, observed)
	}
	if want := []string{"0", "2"}; !slices.Equal(j.asked(), want) {
		t.Errorf("connections asked after %q, want %q", j.asked(), want)
	}
}

// TestEventsResumeLive: a subscription without After asks for none at
// first, then resumes after the last seq it yielded.
func TestEventsResumeLive(t *testing.T) {
	j := &journal{t: t, last: 4, plan: []step{{count: 2, kill: true}, {count: 2}}}
	got, err := read(t, serve(t, j), client.EventsOptions{ID: "box", Action: api.EventActionCreated}, 4)
	if err != nil || !slices.Equal(got, seqs(1, 4)) || !slices.Equal(j.asked(), []string{"", "2"}) {
		t.Errorf("events %v, %v, afters %q", got, err, j.asked())
	}
}

// TestEventsResumeWS: a WebSocket closed with 4410 (fell behind) resumes
// like a dropped NDJSON stream.
func TestEventsResumeWS(t *testing.T) {
	j := &journal{t: t, last: 5, plan: []step{{count: 2}, {count: 3}}}
	after := int64(0)
	got, err := read(t, serve(t, j), client.EventsOptions{After: &after, WebSocket: true}, 5)
	if err != nil || !slices.Equal(got, seqs(1, 5)) || !slices.Equal(j.asked(), []string{"0", "2"}) {
		t.Errorf("events %v, %v, afters %q", got, err, j.asked())
	}
}

// TestEventsGone: a 410 ends the iteration with a *GoneError carrying the
// oldest seq kept, a 400 with an *Error; neither is retried.
func TestEventsGone(t *testing.T) {
	for _, ws := range []bool{false, true} {
		j := &journal{t: t, last: 5, plan: []step{{count: 1, kill: true}, {status: http.StatusGone, oldest: 40}}}
		got, err := read(t, serve(t, j), client.EventsOptions{WebSocket: ws}, 10)
		var g *client.GoneError
		var e *client.Error
		if !errors.As(err, &g) || g.Oldest != 40 || !errors.As(err, &e) || e.Code != http.StatusGone || !slices.Equal(got, []int64{1}) {
			t.Errorf("ws %v: %v, %#v; want event 1, then a 410 with oldest 40", ws, got, err)
		}
		if len(j.asked()) != 2 {
			t.Errorf("ws %v: %d connections, want 2", ws, len(j.asked()))
		}
	}
	j := &journal{t: t, plan: []step{{status: http.StatusBadRequest}}}
	_, err := read(t, serve(t, j), client.EventsOptions{}, 1)
	var e *client.Error
	if !errors.As(err, &e) || e.Code != http.StatusBadRequest || len(j.asked()) != 1 {
		t.Errorf("a 400: %#v after %d connections; want it at once", err, len(j.asked()))
	}
}

// TestEventsContext: ending ctx ends the iteration with ctx's error, even
// while it waits to reconnect.
func TestEventsContext(t *testing.T) {
	j := &journal{t: t, plan: []step{{status: http.StatusServiceUnavailable}}}
	c := serve(t, j)
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	for _, err = range c.Events(ctx, client.EventsOptions{MinBackoff: time.Hour, OnReconnect: func(error) { cancel() }}) {
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}
