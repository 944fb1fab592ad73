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
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sysinfo"
)

var statsTime = time.Unix(1_800_000_000, 5)

// fakeStats is what the fakes' sandboxes report.
func fakeStats() sandbox.Stats {
	peak, limit := uint64(8<<20), uint64(512<<20)
	return sandbox.Stats{
		Time: statsTime,
		CPU: sandbox.CPUStats{UsageUsec: 3000, UserUsec: 2000, SystemUsec: 1000,
			Throttling: &sandbox.CPUThrottling{Periods: 10, ThrottledPeriods: 1, ThrottledUsec: 500}},
		Memory:   sandbox.MemoryStats{Current: 4 << 20, Peak: &peak, Limit: &limit},
		Pids:     sandbox.PidsStats{Current: 3},
		IO:       &sandbox.IOStats{ReadBytes: 4096, WriteBytes: 8192, ReadOps: 1, WriteOps: 2},
		Pressure: sysinfo.PressureSet{CPU: &sysinfo.Pressure{Some: sysinfo.PressureLine{Avg10: 12.5, Avg60: 3, Avg300: 1, TotalUsec: 700}}},
	}
}

// Stats gives the fake manager the stats endpoint's method.
func (f *fakeSandboxes) Stats(_ context.Context, _ string) (sandbox.Stats, error) {
	if f.err != nil {
		return sandbox.Stats{}, f.err
	}
	return fakeStats(), nil
}

// stoppingStats is the fake manager whose sandbox stops after reads
// reads: from then on its stats are a conflict, as the manager's are.
type stoppingStats struct {
	*fakeSandboxes
	mu    sync.Mutex
	reads int
}

func (s *stoppingStats) Stats(ctx context.Context, id string) (sandbox.Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reads == 0 {
		return sandbox.Stats{}, sandbox.Errorf(sandbox.ErrConflict, "sandbox %q is stopped", id)
	}
	s.reads--
	return s.fakeSandboxes.Stats(ctx, id)
}

// statsServer serves the API with the given manager and guest stats, and
// returns its URL and a client that checks every exchange against the
// contract (but sends what it refuses, to see the server refuse it too).
func statsServer(t *testing.T, m handlers.SandboxManager, guest func() (sysinfo.Stats, error)) (string, *http.Client) {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	a := handlers.New(handlers.Config{
		Logger:         logger,
		GuestStats:     guest,
		SandboxManager: func(context.Context) (handlers.SandboxManager, error) { return m, nil },
	})
	srv := httptest.NewServer(httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: logger, Registerer: prometheus.NewRegistry()}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv.URL, &http.Client{Transport: &apitest.Transport{T: t, SkipRequestValidation: true}}
}

// getStats sends a GET; a hang is bounded by the test's context.
func getStats(t *testing.T, c *http.Client, u string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// decodeStatsBody decodes a JSON answer as a map, to compare with what the
// contract says by name.
func decodeStatsBody(t *testing.T, resp *http.Response) map[string]any {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber() // the timestamp's nanoseconds are past a float64's precision
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSandboxStats(t *testing.T) {
	f := &fakeSandboxes{}
	base, c := statsServer(t, f, nil)

	resp := getStats(t, c, base+"/v1/sandboxes/box-1/stats")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	got, _ := json.Marshal(decodeStatsBody(t, resp))
	want := `{"cpu":{"system_usec":1000,"throttling":{"periods":10,"throttled_periods":1,"throttled_usec":500},"usage_usec":3000,"user_usec":2000},` +
		`"io":{"read_bytes":4096,"read_ops":1,"write_bytes":8192,"write_ops":2},` +
		`"memory":{"current_bytes":4194304,"limit_bytes":536870912,"peak_bytes":8388608},"pids":{"current":3},` +
		`"pressure":{"cpu":{"some":{"avg10":12.5,"avg300":1,"avg60":3,"total_usec":700}}},"sandbox_id":"box-1","timestamp":1800000000000000005}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}

	for _, tc := range []struct {
		err    error
		status int
	}{
		{sandbox.Errorf(sandbox.ErrNotFound, `sandbox "box-1"`), http.StatusNotFound},
		{sandbox.Errorf(sandbox.ErrConflict, `sandbox "box-1" is stopped`), http.StatusConflict},
		{sandbox.Errorf(sandbox.ErrUnavailable, "no cgroup"), http.StatusServiceUnavailable},
	} {
		f.err = tc.err
		for _, q := range []string{"", "?interval=1s"} {
			resp := getStats(t, c, base+"/v1/sandboxes/box-1/stats"+q)
			if resp.StatusCode != tc.status {
				t.Errorf("%v%s: status %d, want %d", tc.err, q, resp.StatusCode, tc.status)
			}
		}
	}
}

// TestStatsIntervalBounds: ?interval= takes what the contract's pattern
// takes, and anything else is a 400 naming it, on both endpoints.
func TestStatsIntervalBounds(t *testing.T) {
	base, c := statsServer(t, &fakeSandboxes{}, func() (sysinfo.Stats, error) { return sysinfo.Stats{Time: statsTime}, nil })
	for _, v := range []string{"", "0", "1", "99ms", "0100ms", "3600001ms", "3601s", "61m", "2h", "1.5s", "1m30s", "-1s", "1S", " 1s", "1d", "100us"} {
		for _, path := range []string{"/v1/sandboxes/box-1/stats", "/v1/stats"} {
			resp := getStats(t, c, base+path+"?interval="+url.QueryEscape(v))
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `query parameter \"interval\"`) {
				t.Errorf("%s?interval=%q: %d %s, want a 400 naming interval", path, v, resp.StatusCode, body)
			}
		}
	}
	for _, v := range []string{"100ms", "3600000ms", "1s", "3600s", "1m", "60m", "1h"} {
		resp := getStats(t, c, base+"/v1/stats?interval="+v)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
			t.Errorf("interval=%s: %d %q, want an NDJSON stream", v, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		resp.Body.Close()
	}
}

// TestSandboxStatsStreamEndsWithSandbox: the stream sends a message at
// once and one every interval, and ends when the sandbox stops.
func TestSandboxStatsStreamEndsWithSandbox(t *testing.T) {
	base, c := statsServer(t, &stoppingStats{fakeSandboxes: &fakeSandboxes{}, reads: 3}, nil)
	resp := getStats(t, c, base+"/v1/sandboxes/box-1/stats?interval=100ms")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var n int
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil || m["sandbox_id"] != "box-1" {
			t.Errorf("line %q: %v", sc.Text(), err)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("the stream broke: %v", err)
	}
	if n != 3 {
		t.Errorf("%d messages, want 3: the sandbox stopped after 3 reads", n)
	}
}

// fakeGuestStats is what the fakes' guest reports.
func fakeGuestStats() sysinfo.Stats {
	return sysinfo.Stats{Time: statsTime,
		Memory:      sysinfo.MemoryStats{Total: 4 << 30, Available: 3 << 30, Used: 1 << 30, SwapTotal: 1 << 30, SwapFree: 1 << 30},
		LoadAverage: [3]float64{0.5, 0.25, 0.125},
		Pressure: sysinfo.PressureSet{IO: &sysinfo.Pressure{Some: sysinfo.PressureLine{Avg10: 1, TotalUsec: 9},
			Full: &sysinfo.PressureLine{Avg300: 0.5, TotalUsec: 3}}},
		DataVolume: &sysinfo.VolumeStats{MountPoint: "/run/arcbox/data", Total: 1 << 30, Used: 1 << 20, Free: 1<<30 - 1<<20},
	}
}

func TestGuestStats(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	st := fakeGuestStats()
	var readErr error
	base, c := statsServer(t, nil, func() (sysinfo.Stats, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return st, readErr
	})

	resp := getStats(t, c, base+"/v1/stats")
	got, _ := json.Marshal(decodeStatsBody(t, resp))
	want := `{"data_volume":{"free_bytes":1072693248,"mount_point":"/run/arcbox/data","total_bytes":1073741824,"used_bytes":1048576},` +
		`"load_average":[0.5,0.25,0.125],` +
		`"memory":{"available_bytes":3221225472,"swap_free_bytes":1073741824,"swap_total_bytes":1073741824,"total_bytes":4294967296,"used_bytes":1073741824},` +
		`"pressure":{"io":{"full":{"avg10":0,"avg300":0.5,"avg60":0,"total_usec":3},"some":{"avg10":1,"avg300":0,"avg60":0,"total_usec":9}}},` +
		`"timestamp":1800000000000000005}`
	if resp.StatusCode != http.StatusOK || string(got) != want {
		t.Errorf("%d\ngot  %s\nwant %s", resp.StatusCode, got, want)
	}

	// A stream gives a message at once and then one every interval, until
	// the client goes away.
	resp = getStats(t, c, base+"/v1/stats?interval=100ms")
	sc := bufio.NewScanner(resp.Body)
	for i := range 3 {
		if !sc.Scan() {
			t.Fatalf("message %d: the stream ended: %v", i, sc.Err())
		}
		if !strings.Contains(sc.Text(), `"load_average":[0.5,0.25,0.125]`) {
			t.Errorf("message %d: %s", i, sc.Text())
		}
	}
	resp.Body.Close()

	mu.Lock()
	readErr = errors.New("/proc/meminfo: no MemTotal line")
	mu.Unlock()
	resp = getStats(t, c, base+"/v1/stats")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "no MemTotal line") {
		t.Errorf("a failed read: %d %s, want a 500 saying why", resp.StatusCode, body)
	}
}

// TestGuestStatsNotConfigured: without a source the answer is a 503.
func TestGuestStatsNotConfigured(t *testing.T) {
	base, c := statsServer(t, nil, nil)
	if resp := getStats(t, c, base+"/v1/stats"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", resp.StatusCode)
	}
}
