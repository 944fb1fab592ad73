package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	arcboxagent "github.com/arcbox/arcbox-agent"
	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/clock"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/lifecycle"
	"github.com/arcbox/arcbox-agent/sysinfo"
)

// fakeClock is the guest clock; sets records every step and never touches
// the machine's clock.
type fakeClock struct {
	mu   sync.Mutex
	now  time.Time
	sets []time.Time
	err  error
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }
func (f *fakeClock) Set(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.sets = append(f.sets, t)
	f.now = t
	return nil
}

// fakeRuntime answers for containerd and dockerd; its logs are real files.
type fakeRuntime struct {
	mu         sync.Mutex
	ensures    []bool
	logDir     string
	followed   chan struct{}
	followOnce sync.Once
}

func (f *fakeRuntime) Ensure(_ context.Context, start bool) lifecycle.EnsureResult {
	f.mu.Lock()
	f.ensures = append(f.ensures, start)
	f.mu.Unlock()
	if !start {
		return lifecycle.EnsureResult{Ready: false, Endpoint: "vsock:2375", Message: "docker socket missing: /var/run/docker.sock", Status: lifecycle.StatusFailed}
	}
	return lifecycle.EnsureResult{Ready: true, Endpoint: "vsock:2375", Message: "spawned containerd; spawned dockerd; docker socket ready", Status: lifecycle.StatusStarted}
}

func (f *fakeRuntime) Status(context.Context) lifecycle.Status {
	return lifecycle.Status{ContainerdReady: true, DockerReady: false, Endpoint: "vsock:2375", Detail: "docker socket missing: /var/run/docker.sock",
		Services: []lifecycle.Service{
			{Name: "containerd", Status: lifecycle.ServiceReady, Detail: "socket reachable: /run/containerd/containerd.sock"},
			{Name: "dockerd", Status: lifecycle.ServiceError, Detail: "exited: signal: killed (pid 42)"},
			{Name: "data-volume", Status: lifecycle.ServiceReady, Detail: "device /dev/vdb; filesystem btrfs; mounted; 1000 bytes free"},
		}}
}

// OpenLog streams the log file, or its tail, then, when it follows, one
// line "appended later" and nothing more until ctx ends.
func (f *fakeRuntime) OpenLog(ctx context.Context, service string, opt lifecycle.LogOptions) (io.ReadCloser, error) {
	if service != "containerd" && service != "dockerd" {
		return nil, fmt.Errorf("%q: %w", service, lifecycle.ErrUnknownService)
	}
	l, err := os.Open(filepath.Join(f.logDir, service+".log"))
	if err != nil {
		return nil, err
	}
	defer l.Close()
	var data []byte
	if opt.Tail > 0 {
		data, _, err = lifecycle.Tail(l, opt.Tail)
	} else {
		data, err = io.ReadAll(l)
	}
	if err != nil {
		return nil, err
	}
	stream := io.Reader(bytes.NewReader(data))
	if opt.Follow {
		stream = io.MultiReader(stream, strings.NewReader("appended later\n"), &fakeFollow{ctx: ctx, f: f})
	}
	return io.NopCloser(stream), nil
}

// fakeFollow is a followed log's end: nothing is appended; its first Read
// says the handler has come there, and each waits for ctx to end.
type fakeFollow struct {
	ctx context.Context
	f   *fakeRuntime
}

func (e *fakeFollow) Read([]byte) (int, error) {
	e.f.followOnce.Do(func() { close(e.f.followed) })
	<-e.ctx.Done()
	return 0, io.EOF
}

type harness struct {
	runtime   *fakeRuntime
	sandboxes *fakeSandboxes
	client    *api.ClientWithResponses
	url       string
	clock     *fakeClock
	logs      *syncBuffer
	ready     bool
	infoErr   error
	shutdowns *fakeShutdown
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

var guestNow = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, setClock bool) *harness {
	t.Helper()
	h := &harness{clock: &fakeClock{now: guestNow}, logs: &syncBuffer{}, ready: true,
		runtime:   &fakeRuntime{logDir: t.TempDir(), followed: make(chan struct{})},
		shutdowns: &fakeShutdown{}}
	logger := slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	var setter clock.Setter
	if setClock {
		setter = h.clock.Set
	}
	a := handlers.New(handlers.Config{
		Version: "test-1.0",
		Logger:  logger,
		Clock:   clock.NewSyncer(h.clock.Now, setter),
		SystemInfo: func() (sysinfo.Info, error) {
			if h.infoErr != nil {
				// What a failing source leaves: the facts it still read.
				return sysinfo.Info{KernelVersion: "6.1.0", OSName: "Linux", CPUCount: 2}, h.infoErr
			}
			return sysinfo.Info{KernelVersion: "6.1.0", OSName: "Linux", OSVersion: "#1", Arch: "x86_64",
				Hostname: "vm", TotalMemory: 4 << 30, AvailableMemory: 3 << 30, CPUCount: 2,
				LoadAverage: [3]float64{0.5, 0.25, 0.1}, Uptime: 90 * time.Second, IPAddresses: []string{"192.168.64.2"}}, nil
		},
		Listeners: func() (bool, []httpapi.ListenerStatus) {
			if h.ready {
				return true, []httpapi.ListenerStatus{{Name: "control", URL: "unix:///run/a.sock", State: httpapi.StateBound, Address: "/run/a.sock"}}
			}
			return false, []httpapi.ListenerStatus{{Name: "control", URL: "vsock://:1024", State: httpapi.StateBinding, Error: "no such device"}}
		},
		Metrics:    promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Spec:       arcboxagent.OpenAPI,
		Runtime:    h.runtime,
		GuestStats: func() (sysinfo.Stats, error) { return fakeGuestStats(), nil },
		Shares: func() []api.Share {
			return []api.Share{{Tag: "arcbox", Path: "/arcbox", Options: "rw,nosuid,nodev,relatime", Dax: false}}
		},
		Shutdown:             h.shutdowns.order,
		DefaultShutdownGrace: 10 * time.Second,
		SandboxManager: func(context.Context) (handlers.SandboxManager, error) {
			if h.sandboxes == nil {
				return nil, errors.New("no OCI runtime: neither crun nor runc is on PATH")
			}
			return h.sandboxes, nil
		},
	})
	srv := httptest.NewServer(httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: logger, Registerer: reg}))
	t.Cleanup(srv.Close)
	h.url = srv.URL
	h.client = apitest.NewClient(t, srv.URL, nil)
	return h
}

func ptr[T any](v T) *T { return &v }

func TestHealth(t *testing.T) {
	h := newHarness(t, true)
	ctx := context.Background()
	for name, get := range map[string]func() (int, *api.Health){
		"livez": func() (int, *api.Health) {
			r, err := h.client.GetLivezWithResponse(ctx)
			must(t, err)
			return r.StatusCode(), r.JSON200
		},
		"healthz": func() (int, *api.Health) {
			r, err := h.client.GetHealthzWithResponse(ctx)
			must(t, err)
			return r.StatusCode(), r.JSON200
		},
	} {
		code, body := get()
		if code != 200 || body == nil || body.Status != api.Ok {
			t.Errorf("%s: got %d %+v, want 200 ok", name, code, body)
		}
	}
}

func TestReadyz(t *testing.T) {
	h := newHarness(t, true)
	r, err := h.client.GetReadyzWithResponse(context.Background())
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200 == nil || !r.JSON200.Ready {
		t.Fatalf("ready: got %d %s", r.StatusCode(), r.Body)
	}
	h.ready = false
	r, err = h.client.GetReadyzWithResponse(context.Background())
	must(t, err)
	if r.StatusCode() != 503 || r.JSON503 == nil || r.JSON503.Ready || r.JSON503.Listeners[0].State != api.ListenerStateStateBinding {
		t.Fatalf("not ready: got %d %s", r.StatusCode(), r.Body)
	}
	if e := r.JSON503.Listeners[0].Error; e == nil || *e != "no such device" {
		t.Errorf("not ready: listener error = %v, want the bind error", e)
	}
}

func TestGetPing(t *testing.T) {
	h := newHarness(t, true)
	r, err := h.client.GetPingWithResponse(context.Background())
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200.Message != "pong" || r.JSON200.Version != "test-1.0" {
		t.Fatalf("got %d %s", r.StatusCode(), r.Body)
	}
	if r.JSON200.ClockDriftMs != nil || r.JSON200.ClockStepped != nil {
		t.Errorf("a GET ping reported clock fields: %s", r.Body)
	}
}

func TestPostPingClock(t *testing.T) {
	host := guestNow // the host's view of now; tests move the guest around it
	tests := []struct {
		name      string
		guest     time.Time
		setClock  bool
		setErr    error
		req       api.PingRequest
		wantMsg   string
		wantDrift *int64
		wantStep  bool
		wantErr   bool
	}{
		{name: "no body fields", req: api.PingRequest{}, wantMsg: "pong"},
		{name: "message", req: api.PingRequest{Message: ptr("hello")}, wantMsg: "pong: hello"},
		{name: "whole seconds within 1s", guest: host.Add(800 * time.Millisecond), setClock: true,
			req: api.PingRequest{TimestampSecs: ptr(host.Unix())}, wantMsg: "pong", wantDrift: ptr(int64(800))},
		{name: "whole seconds past 1s steps", guest: host.Add(-5 * time.Second), setClock: true,
			req: api.PingRequest{TimestampSecs: ptr(host.Unix())}, wantMsg: "pong", wantDrift: ptr(int64(-5000)), wantStep: true},
		{name: "nanos within 50ms", guest: host.Add(30 * time.Millisecond), setClock: true,
			req: api.PingRequest{TimestampNanos: ptr(host.UnixNano())}, wantMsg: "pong", wantDrift: ptr(int64(30))},
		{name: "nanos past 50ms steps", guest: host.Add(-70 * time.Millisecond), setClock: true,
			req: api.PingRequest{TimestampNanos: ptr(host.UnixNano())}, wantMsg: "pong", wantDrift: ptr(int64(-70)), wantStep: true},
		{name: "proto-style fraction", guest: host.Add(500*time.Millisecond + 80*time.Millisecond), setClock: true,
			req: api.PingRequest{TimestampSecs: ptr(host.Unix()), TimestampNanos: ptr(int64(500_000_000))}, wantMsg: "pong", wantDrift: ptr(int64(80)), wantStep: true},
		{name: "whole nanos win over secs", guest: host.Add(30 * time.Millisecond), setClock: true,
			req: api.PingRequest{TimestampSecs: ptr(int64(1000)), TimestampNanos: ptr(host.UnixNano())}, wantMsg: "pong", wantDrift: ptr(int64(30))},
		{name: "guest at year 2000 is stepped", guest: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), setClock: true,
			req: api.PingRequest{TimestampSecs: ptr(host.Unix())}, wantMsg: "pong",
			wantDrift: ptr(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).Sub(host).Milliseconds()), wantStep: true},
		{name: "set-clock off reports drift only", guest: host.Add(time.Hour), setClock: false,
			req: api.PingRequest{TimestampSecs: ptr(host.Unix())}, wantMsg: "pong", wantDrift: ptr(int64(3_600_000))},
		{name: "setter failure is reported, ping succeeds", guest: host.Add(time.Hour), setClock: true, setErr: errors.New("operation not permitted"),
			req: api.PingRequest{TimestampSecs: ptr(host.Unix())}, wantMsg: "pong", wantDrift: ptr(int64(3_600_000)), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.setClock)
			if !tt.guest.IsZero() {
				h.clock.now = tt.guest
			}
			h.clock.err = tt.setErr
			r, err := h.client.PostPingWithResponse(context.Background(), tt.req)
			must(t, err)
			if r.StatusCode() != 200 {
				t.Fatalf("status %d: %s", r.StatusCode(), r.Body)
			}
			got := r.JSON200
			if got.Message != tt.wantMsg {
				t.Errorf("message = %q, want %q", got.Message, tt.wantMsg)
			}
			switch {
			case tt.wantDrift == nil && got.ClockDriftMs != nil:
				t.Errorf("clock_drift_ms = %d, want absent", *got.ClockDriftMs)
			case tt.wantDrift != nil && (got.ClockDriftMs == nil || *got.ClockDriftMs != *tt.wantDrift):
				t.Errorf("clock_drift_ms = %v, want %d", got.ClockDriftMs, *tt.wantDrift)
			}
			if tt.wantDrift != nil && (got.ClockStepped == nil || *got.ClockStepped != tt.wantStep) {
				t.Errorf("clock_stepped = %v, want %v", got.ClockStepped, tt.wantStep)
			}
			if stepped := len(h.clock.sets) > 0; stepped != tt.wantStep {
				t.Errorf("clock set %v, want stepped=%v", h.clock.sets, tt.wantStep)
			}
			if tt.wantStep && h.clock.sets[0].Sub(host).Abs() > time.Second {
				t.Errorf("clock set to %v, want the host's %v", h.clock.sets[0], host)
			}
			if (got.ClockError != nil) != tt.wantErr {
				t.Errorf("clock_error = %v, want present=%v", got.ClockError, tt.wantErr)
			}
		})
	}
}

func TestPostPingRejectsBadInput(t *testing.T) {
	h := newHarness(t, true)
	tests := []struct {
		name, body string
		wantCode   int
		wantInMsg  string
	}{
		{"unknown field", `{"message":"x","bogus":1}`, 400, `unknown field "bogus"`},
		{"wrong type", `{"timestamp_secs":"soon"}`, 400, `field "timestamp_secs" must be an integer`},
		{"negative secs", `{"timestamp_secs":-1}`, 400, `"timestamp_secs" must not be negative`},
		{"nanos too small alone", `{"timestamp_nanos":5}`, 400, `"timestamp_nanos"`},
		{"secs past what nanoseconds hold", `{"timestamp_secs":9223372037}`, 400, `"timestamp_secs" must be at most 9223372036`},
		{"malformed", `{"message":`, 400, "malformed JSON"},
		{"trailing data", `{"message":"a"} {"message":"b"}`, 400, "after the JSON value"},
		{"not an object", `[1,2]`, 400, "the body must be an object, not array"},
	}
	tr := &apitest.Transport{T: t, SkipRequestValidation: true}
	c := apitest.NewClientWith(t, h.url, tr)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := c.PostPingWithBodyWithResponse(context.Background(), "application/json", strings.NewReader(tt.body))
			must(t, err)
			var e api.Error
			if err := json.Unmarshal(r.Body, &e); err != nil {
				t.Fatalf("body %q is not the error shape: %v", r.Body, err)
			}
			if r.StatusCode() != tt.wantCode || e.Code != int32(tt.wantCode) || !strings.Contains(e.Message, tt.wantInMsg) {
				t.Errorf("got %d %q, want %d with %q", r.StatusCode(), e.Message, tt.wantCode, tt.wantInMsg)
			}
		})
	}
	if len(h.clock.sets) != 0 {
		t.Errorf("a rejected ping set the clock: %v", h.clock.sets)
	}
}

func TestBodyLimit(t *testing.T) {
	h := newHarness(t, true)
	big := `{"message":"` + strings.Repeat("x", httpapi.MaxBodyBytes) + `"}`
	c := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})

	// Declared length: refused before reading.
	r, err := c.PostPingWithBodyWithResponse(context.Background(), "application/json", strings.NewReader(big))
	must(t, err)
	if r.StatusCode() != 413 || r.JSON413 == nil || r.JSON413.Code != 413 {
		t.Errorf("declared length: got %d %s, want 413", r.StatusCode(), r.Body)
	}
	// Chunked, length unknown: refused once the limit is read past.
	r, err = c.PostPingWithBodyWithResponse(context.Background(), "application/json", io.MultiReader(strings.NewReader(big)))
	must(t, err)
	if r.StatusCode() != 413 || r.JSON413 == nil {
		t.Errorf("chunked: got %d %s, want 413", r.StatusCode(), r.Body)
	}
}

func TestInfo(t *testing.T) {
	h := newHarness(t, true)
	r, err := h.client.GetInfoWithResponse(context.Background())
	must(t, err)
	got := r.JSON200
	if r.StatusCode() != 200 || got.KernelVersion != "6.1.0" || got.TotalMemory != 4<<30 || got.CpuCount != 2 ||
		len(got.LoadAverage) != 3 || got.Uptime != 90 || got.IpAddresses[0] != "192.168.64.2" {
		t.Fatalf("got %d %s", r.StatusCode(), r.Body)
	}
	if got.Errors != nil {
		t.Errorf("errors %v with every fact read, want it absent", *got.Errors)
	}
	// What cannot be read is named, and the rest is answered: the seed did.
	h.infoErr = errors.Join(errors.New("read /proc/meminfo: no such file or directory"), errors.New("uname: operation not permitted"))
	r, err = h.client.GetInfoWithResponse(context.Background())
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200 == nil || r.JSON200.Errors == nil || len(*r.JSON200.Errors) != 2 ||
		!strings.Contains((*r.JSON200.Errors)[0], "/proc/meminfo") || r.JSON200.KernelVersion != "6.1.0" {
		t.Fatalf("failing sources: got %d %s, want 200 with what was read and both failures named", r.StatusCode(), r.Body)
	}
}

func TestUnknownRouteAndMethod(t *testing.T) {
	h := newHarness(t, true)
	resp, err := http.Get(h.url + "/v1/nope")
	must(t, err)
	assertError(t, resp, 404, "no route for GET /v1/nope")

	req, _ := http.NewRequest(http.MethodDelete, h.url+"/v1/ping", nil)
	resp, err = http.DefaultClient.Do(req)
	must(t, err)
	if allow := resp.Header.Get("Allow"); allow != "GET, POST" {
		t.Errorf("Allow = %q, want %q", allow, "GET, POST")
	}
	assertError(t, resp, 405, "DELETE is not allowed on /v1/ping")
}

func TestTraceID(t *testing.T) {
	h := newHarness(t, true)
	req, _ := http.NewRequest(http.MethodGet, h.url+"/v1/ping", nil)
	req.Header.Set(httpapi.TraceHeader, "trace-abc-123")
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	resp.Body.Close()
	if got := resp.Header.Get(httpapi.TraceHeader); got != "trace-abc-123" {
		t.Errorf("echoed trace id %q, want trace-abc-123", got)
	}
	if !strings.Contains(h.logs.String(), `"trace_id":"trace-abc-123"`) {
		t.Errorf("log has no line with the trace id:\n%s", h.logs.String())
	}

	// Without one, or with one that would break a log line, one is made.
	for _, sent := range []string{"", "bad id\nwith newline"} {
		req, _ := http.NewRequest(http.MethodGet, h.url+"/v1/ping", nil)
		if sent != "" {
			req.Header.Set(httpapi.TraceHeader, sent)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			// net/http refuses a header value with a newline; that is the point.
			continue
		}
		resp.Body.Close()
		if got := resp.Header.Get(httpapi.TraceHeader); len(got) != 32 {
			t.Errorf("sent %q: made trace id %q, want 32 hex digits", sent, got)
		}
	}
}

func TestRequestMetricsUseRoutePatterns(t *testing.T) {
	h := newHarness(t, true)
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		_, err := h.client.GetSandboxWithResponse(ctx, id)
		must(t, err)
	}
	r, err := h.client.GetMetricsWithResponse(ctx)
	must(t, err)
	body := string(r.Body)
	want := `arcbox_agent_http_request_duration_seconds_count{code="503",method="GET",route="/v1/sandboxes/{id}"} 3`
	if !strings.Contains(body, want) {
		t.Errorf("metrics lack %s:\n%s", want, body)
	}
	if strings.Contains(body, `route="/v1/sandboxes/a"`) {
		t.Error("metrics use the raw path")
	}
}

func TestOpenAPIServed(t *testing.T) {
	h := newHarness(t, true)
	r, err := h.client.GetOpenAPIWithResponse(context.Background())
	must(t, err)
	if r.StatusCode() != 200 || !bytes.Equal(r.Body, arcboxagent.OpenAPI) {
		t.Fatalf("got %d, %d bytes; want the embedded spec", r.StatusCode(), len(r.Body))
	}
	if ct := r.HTTPResponse.Header.Get("Content-Type"); ct != "application/yaml" {
		t.Errorf("content type %q", ct)
	}
}

// TestOverUnixSocket drives the API over a real unix socket, as socat and
// curl --unix-socket do.
func TestOverUnixSocket(t *testing.T) {
	h := newHarness(t, true)
	_ = h
	sock := t.TempDir() + "/agent.sock"
	ln, err := net.Listen("unix", sock)
	must(t, err)
	srv := &http.Server{Handler: rebuildRouter(t)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	c := apitest.NewClient(t, "http://agent", tr)
	r, err := c.PostPingWithResponse(context.Background(), api.PingRequest{Message: ptr("over unix")})
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200.Message != "pong: over unix" {
		t.Fatalf("got %d %s", r.StatusCode(), r.Body)
	}
}

func rebuildRouter(t *testing.T) http.Handler {
	t.Helper()
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := handlers.New(handlers.Config{
		Version: "x", Logger: logger, Clock: clock.NewSyncer(time.Now, nil),
		SystemInfo: sysinfo.Source{}.Collect,
		Listeners:  func() (bool, []httpapi.ListenerStatus) { return true, nil },
		Metrics:    promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), Spec: arcboxagent.OpenAPI,
	})
	return httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: logger, Registerer: reg})
}

func assertError(t *testing.T, resp *http.Response, code int, inMsg string) {
	t.Helper()
	defer resp.Body.Close()
	var e api.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("status %d: body is not the error shape: %v", resp.StatusCode, err)
	}
	if resp.StatusCode != code || int(e.Code) != code || !strings.Contains(e.Message, inMsg) {
		t.Errorf("got %d %+v, want %d with %q", resp.StatusCode, e, code, inMsg)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q, want application/json", ct)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestPingTimesAsTheContractSays sends every pairing of corner values of
// timestamp_secs and timestamp_nanos and checks that the server refuses
// exactly what PingRequest refuses, and that nanos, given as a whole
// time, wins over secs.
func TestPingTimesAsTheContractSays(t *testing.T) {
	h := newHarness(t, false)
	c := &http.Client{Transport: &apitest.Transport{T: t, SkipRequestValidation: true}}
	secs := []string{"", "0", "1", "1764331200", "9223372036", "9223372037", "-1"}
	nanos := []string{"", "0", "1", "500000000", "999999999", "1000000000", "1764331200250000000", "9223372036854775807", "-1"}
	for _, s := range secs {
		for _, n := range nanos {
			var fields []string
			if s != "" {
				fields = append(fields, `"timestamp_secs":`+s)
			}
			if n != "" {
				fields = append(fields, `"timestamp_nanos":`+n)
			}
			body := "{" + strings.Join(fields, ",") + "}"
			wantOK := apitest.ValidateJSON(t, "PingRequest", []byte(body)) == nil
			resp, err := c.Post(h.url+"/v1/ping", "application/json", strings.NewReader(body))
			must(t, err)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if gotOK := resp.StatusCode == http.StatusOK; gotOK != wantOK {
				t.Errorf("%s: got %d %s; the contract accepts it: %v", body, resp.StatusCode, b, wantOK)
				continue
			}
			if n == "1764331200250000000" && wantOK {
				var pr api.PingResponse
				must(t, json.Unmarshal(b, &pr))
				want := guestNow.Sub(time.Unix(0, 1764331200250000000)).Milliseconds()
				if pr.ClockDriftMs == nil || *pr.ClockDriftMs != want {
					t.Errorf("%s: clock_drift_ms %v, want %d: the nanoseconds win", body, pr.ClockDriftMs, want)
				}
			}
		}
	}
}

// TestErrorMessagesNameNoClass: an error's message says what is wrong and
// why; its class is the status, never words glued on ("invalid request:
// ...", "...: conflict").
func TestErrorMessagesNameNoClass(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	classes := []string{"invalid request", "invalid input", "bad request", "not found", "conflict", "unavailable", "busy", "not implemented", "empty request body"}
	c := &http.Client{Transport: &apitest.Transport{T: t, SkipRequestValidation: true}}
	for _, tc := range []struct{ method, path, contentType, body string }{
		{"POST", "/v1/ping", "application/json", `{"timestamp_nanos":-1}`},
		{"POST", "/v1/ping", "application/json", `{"timestamp_nanos":5}`},
		{"POST", "/v1/ping", "application/json", `{"bogus":1}`},
		{"POST", "/v1/ping", "application/json", `{"message":null}`},
		{"POST", "/v1/ping", "text/plain", `{}`},
		{"POST", "/v1/sandboxes", "application/json", ``},
		{"POST", "/v1/sandboxes/box-1/run", "application/json", `{"cmd":[""]}`},
		{"GET", "/v1/sandboxes/-bad", "", ``},
		{"GET", "/v1/runtime/logs?service=nope", "", ``},
	} {
		req, err := http.NewRequest(tc.method, h.url+tc.path, strings.NewReader(tc.body))
		must(t, err)
		if tc.contentType != "" {
			req.Header.Set("Content-Type", tc.contentType)
		}
		resp, err := c.Do(req)
		must(t, err)
		var e api.Error
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if err != nil || e.Code < 400 {
			t.Errorf("%s %s %s: %d, want an error", tc.method, tc.path, tc.body, resp.StatusCode)
			continue
		}
		for _, class := range classes {
			if strings.HasPrefix(e.Message, class+":") || strings.HasSuffix(e.Message, ": "+class) {
				t.Errorf("%s %s %s: message %q carries its class %q", tc.method, tc.path, tc.body, e.Message, class)
			}
		}
	}
}
