package handlers_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/lifecycle"
)

// phasedRuntime is a runtime whose start tells its phases to the watch
// of the call: the first at once, the rest once the test lets it go on
// (proceed), so a test sees a phase before the answer exists. gaveUp is
// closed when a call's context ends while its start goes on.
type phasedRuntime struct {
	fakeRuntime
	proceed chan struct{}
	gaveUp  chan struct{}

	mu      sync.Mutex
	watched bool // the last Ensure had a watch
}

var startPhases = []lifecycle.Phase{
	{Name: lifecycle.PhaseDataVolume, Took: 35 * time.Millisecond},
	{Name: lifecycle.PhaseContainerdReady, Took: 412 * time.Millisecond},
	{Name: lifecycle.PhaseDockerdReady, Took: 1200 * time.Millisecond},
	{Name: lifecycle.PhaseEnsure, Took: 1804 * time.Millisecond, Status: lifecycle.StatusStarted},
}

func (f *phasedRuntime) Ensure(ctx context.Context, start bool) lifecycle.EnsureResult {
	watch := lifecycle.PhaseWatch(ctx)
	f.mu.Lock()
	f.watched = watch != nil
	f.mu.Unlock()
	if !start {
		return f.fakeRuntime.Ensure(ctx, start)
	}
	tell := func(p lifecycle.Phase) {
		if watch != nil {
			watch(p)
		}
	}
	tell(startPhases[0])
	select {
	case <-f.proceed:
	case <-ctx.Done():
		close(f.gaveUp)
		return lifecycle.EnsureResult{Status: lifecycle.StatusFailed, Message: "stopped waiting for the runtime to start (it goes on): " + context.Cause(ctx).Error()}
	}
	for _, p := range startPhases[1:] {
		tell(p)
	}
	return f.fakeRuntime.Ensure(ctx, start)
}

// newPhasedServer serves the API over rt; every answer its SDK reads is
// checked against the contract.
func newPhasedServer(t *testing.T, rt *phasedRuntime) (string, *client.Client) {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	a := handlers.New(handlers.Config{Version: "test-1.0", Logger: logger, Runtime: rt})
	srv := httptest.NewServer(httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: logger, Registerer: prometheus.NewRegistry()}))
	t.Cleanup(srv.Close)
	c, err := client.New("tcp://"+strings.TrimPrefix(srv.URL, "http://"),
		client.WithTransport(func(base http.RoundTripper) http.RoundTripper { return &apitest.Transport{T: t, Base: base} }))
	if err != nil {
		t.Fatal(err)
	}
	return srv.URL, c
}

func newPhasedRuntime() *phasedRuntime {
	return &phasedRuntime{proceed: make(chan struct{}), gaveUp: make(chan struct{})}
}

// TestEnsureRuntimeStreamsPhases: asked for NDJSON, ensure sends a phase
// line as soon as the phase ends, before the start has an answer, then
// each later phase, then the answer last; the SDK hands each phase over
// and returns the answer. Every line is checked against the contract.
func TestEnsureRuntimeStreamsPhases(t *testing.T) {
	rt := newPhasedRuntime()
	_, c := newPhasedServer(t, rt)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	defer cancel()

	seen := make(chan api.RuntimeEnsureProgress, len(startPhases))
	answered := make(chan api.RuntimeEnsureResponse, 1)
	failed := make(chan error, 1)
	go func() {
		res, err := c.EnsureRuntime(ctx, api.RuntimeEnsureRequest{}, func(p api.RuntimeEnsureProgress) { seen <- p })
		if err != nil {
			failed <- err
			return
		}
		answered <- res
	}()
	select {
	case p := <-seen:
		if p.Phase == nil || *p.Phase != api.RuntimeEnsureProgressPhaseDataVolume || p.TookMs == nil || *p.TookMs != 35 || p.Status != nil {
			t.Errorf("the first line: %s, want data_volume in 35 ms", jsonOf(p))
		}
	case err := <-failed:
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal("no phase line while the start was under way")
	}
	close(rt.proceed)
	var res api.RuntimeEnsureResponse
	select {
	case res = <-answered:
	case err := <-failed:
		t.Fatal(err)
	}
	close(seen)
	var names []string
	var last api.RuntimeEnsureProgress
	for p := range seen {
		names = append(names, string(*p.Phase))
		last = p
	}
	if want := []string{"containerd_ready", "dockerd_ready", "ensure"}; !slices.Equal(names, want) {
		t.Errorf("the later phase lines: %v, want %v", names, want)
	}
	if last.Status == nil || *last.Status != api.RuntimeEnsureProgressStatusStarted || *last.TookMs != 1804 {
		t.Errorf("the ensure line: %s, want started in 1804 ms", jsonOf(last))
	}
	if !res.Ready || res.Status != api.RuntimeEnsureResponseStatusStarted || res.Endpoint != "vsock:2375" {
		t.Errorf("the answer: %+v", res)
	}
}

// TestEnsureRuntimeStreamWire reads the NDJSON as curl would: the exact
// lines, the last one the answer, and the body's end after it.
func TestEnsureRuntimeStreamWire(t *testing.T) {
	rt := newPhasedRuntime()
	close(rt.proceed)
	url, _ := newPhasedServer(t, rt)
	c := apitest.NewClient(t, url, nil)
	resp, err := c.EnsureRuntime(context.Background(), api.RuntimeEnsureRequest{}, func(_ context.Context, req *http.Request) error {
		req.Header.Set("Accept", "application/x-ndjson")
		return nil
	})
	must(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	want := `{"phase":"data_volume","took_ms":35}
{"phase":"containerd_ready","took_ms":412}
{"phase":"dockerd_ready","took_ms":1200}
{"phase":"ensure","status":"started","took_ms":1804}
{"result":{"endpoint":"vsock:2375","message":"spawned containerd; spawned dockerd; docker socket ready","ready":true,"status":"started"}}
`
	if string(body) != want {
		t.Errorf("body:\n%s\nwant:\n%s", body, want)
	}
}

// TestEnsureRuntimeAcceptChooses: only an Accept that names NDJSON, and
// does not prefer JSON to it, gets the stream; everything else gets the
// one JSON answer, as before, and the runtime is given no watch for it.
// A probe streamed has no phases, only its answer.
func TestEnsureRuntimeAcceptChooses(t *testing.T) {
	rt := newPhasedRuntime()
	close(rt.proceed)
	url, _ := newPhasedServer(t, rt)
	c := apitest.NewClient(t, url, nil)
	for _, tc := range []struct {
		accept []string
		ndjson bool
	}{
		{nil, false},
		{[]string{"application/json"}, false},
		{[]string{"*/*"}, false},
		{[]string{"application/*"}, false},
		{[]string{"application/x-ndjson"}, true},
		{[]string{"application/x-ndjson;q=0"}, false},
		{[]string{"application/json, application/x-ndjson;q=0.5"}, false},
		{[]string{"application/json;q=0.5, application/x-ndjson"}, true},
		{[]string{"application/json", "application/x-ndjson"}, true},
		{[]string{"text/html", "application/x-ndjson;q=0.1"}, true},
	} {
		resp, err := c.EnsureRuntime(context.Background(), api.RuntimeEnsureRequest{}, func(_ context.Context, req *http.Request) error {
			for _, a := range tc.accept {
				req.Header.Add("Accept", a)
			}
			return nil
		})
		must(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		must(t, err)
		ct := resp.Header.Get("Content-Type")
		rt.mu.Lock()
		watched := rt.watched
		rt.mu.Unlock()
		if tc.ndjson {
			if ct != "application/x-ndjson" || strings.Count(string(body), "\n") != len(startPhases)+1 || !watched {
				t.Errorf("Accept %q: %s %q (watched %v), want the stream", tc.accept, ct, body, watched)
			}
			continue
		}
		var res api.RuntimeEnsureResponse
		if ct != "application/json" || json.Unmarshal(body, &res) != nil || res.Status != "started" || watched {
			t.Errorf("Accept %q: %s %q (watched %v), want one JSON answer", tc.accept, ct, body, watched)
		}
	}

	resp, err := c.EnsureRuntime(context.Background(), api.RuntimeEnsureRequest{StartIfNeeded: ptr(false)}, func(_ context.Context, req *http.Request) error {
		req.Header.Set("Accept", "application/x-ndjson")
		return nil
	})
	must(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	if !strings.HasPrefix(string(body), `{"result":{`) || strings.Count(string(body), "\n") != 1 || !strings.Contains(string(body), `"status":"failed"`) {
		t.Errorf("a streamed probe: %q, want its answer alone", body)
	}
}

// TestEnsureRuntimeJSONUnchanged: the generated wrapper, which sends no
// Accept, still reads one JSON answer.
func TestEnsureRuntimeJSONUnchanged(t *testing.T) {
	rt := newPhasedRuntime()
	close(rt.proceed)
	url, c := newPhasedServer(t, rt)
	r, err := apitest.NewClient(t, url, nil).EnsureRuntimeWithResponse(context.Background(), api.RuntimeEnsureRequest{})
	must(t, err)
	if r.JSON200 == nil || r.JSON200.Status != api.RuntimeEnsureResponseStatusStarted {
		t.Fatalf("%d %s", r.StatusCode(), r.Body)
	}
	res, err := c.EnsureRuntime(context.Background(), api.RuntimeEnsureRequest{}, nil)
	if err != nil || res.Status != api.RuntimeEnsureResponseStatusStarted {
		t.Fatalf("the SDK without progress: %+v, %v", res, err)
	}
}

// TestEnsureRuntimeStreamClientGoesAway: a client that drops mid-stream
// ends its call's wait, as a JSON client's does, and nothing else: the
// handler returns, and the start is the runtime's to finish.
func TestEnsureRuntimeStreamClientGoesAway(t *testing.T) {
	rt := newPhasedRuntime()
	url, _ := newPhasedServer(t, rt)
	c := apitest.NewClient(t, url, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := c.EnsureRuntime(ctx, api.RuntimeEnsureRequest{}, func(_ context.Context, req *http.Request) error {
		req.Header.Set("Accept", "application/x-ndjson")
		return nil
	})
	must(t, err)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	must(t, err)
	if !strings.Contains(line, `"data_volume"`) {
		t.Fatalf("the first line: %q", line)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-rt.gaveUp:
	case <-time.After(time.Minute): // bounds a hang only
		t.Fatal("the call's context did not end when its client went away")
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
