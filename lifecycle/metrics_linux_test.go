package lifecycle

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/startup"
)

// assertReady checks the runtime_ready gauge of both daemons.
func assertReady(t *testing.T, r *Runtime, when string, containerd, dockerd float64) {
	t.Helper()
	if got := testutil.ToFloat64(r.ready.WithLabelValues(Containerd)); got != containerd {
		t.Errorf("%s: runtime_ready{containerd} = %v, want %v", when, got, containerd)
	}
	if got := testutil.ToFloat64(r.ready.WithLabelValues(Dockerd)); got != dockerd {
		t.Errorf("%s: runtime_ready{dockerd} = %v, want %v", when, got, dockerd)
	}
}

// TestMetricsExistFromTheStartAndPassPromtool scrapes a fresh Runtime's
// metrics: every series with labels known at start is there at zero
// before any ensure, and Prometheus' own linter finds nothing to say,
// before and after a start.
func TestMetricsExistFromTheStartAndPassPromtool(t *testing.T) {
	promtool := testenv.RequireBinary(t, "promtool")
	f := newFakes(t)
	reg := prometheus.NewPedanticRegistry()
	r, _ := fakeRuntime(t, f, func(c *Config) {
		c.Registerer = reg
		c.Phases = startup.NewRuntime(reg, time.Now())
	})
	scrape := func() string {
		t.Helper()
		rec := httptest.NewRecorder()
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(rec.Body.Bytes())
		if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics: %v\n%s\n%s", err, out, rec.Body)
		}
		return rec.Body.String()
	}
	text := scrape()
	for _, want := range []string{
		`arcbox_agent_runtime_ready{service="containerd"} 0`,
		`arcbox_agent_runtime_ready{service="dockerd"} 0`,
		`arcbox_agent_runtime_daemon_exits_total{service="containerd"} 0`,
		`arcbox_agent_runtime_daemon_exits_total{service="dockerd"} 0`,
		`arcbox_agent_runtime_ensure_total{status="started"} 0`,
		`arcbox_agent_runtime_ensure_total{status="reused"} 0`,
		`arcbox_agent_runtime_ensure_total{status="failed"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("fresh metrics lack %s:\n%s", want, text)
		}
	}
	if res := r.Ensure(context.Background(), true); res.Status != StatusStarted {
		t.Fatalf("Ensure: %+v", res)
	}
	text = scrape()
	for _, want := range []string{
		`arcbox_agent_runtime_ready{service="dockerd"} 1`,
		`arcbox_agent_runtime_ensure_total{status="started"} 1`,
		`arcbox_agent_runtime_phase_duration_seconds{phase="ensure"}`,
		`arcbox_agent_runtime_phase_end_seconds{phase="dockerd_ready"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics after a start lack %s:\n%s", want, text)
		}
	}
	if strings.Contains(text, "arcbox_agent_startup_phase") {
		t.Errorf("the runtime's phases reached the startup family:\n%s", text)
	}
}

// TestReadyFollowsAProbeOfADaemonNotOurs: a dockerd the agent did not
// start is ready while a probe finds it, and not once it is gone.
func TestReadyFollowsAProbeOfADaemonNotOurs(t *testing.T) {
	f := newFakes(t)
	r, cfg := fakeRuntime(t, f, nil)
	ln := fakeDockerOn(t, cfg.DockerSocket)
	if res := r.Ensure(context.Background(), false); !res.Ready {
		t.Fatalf("probe: %+v, want ready", res)
	}
	assertReady(t, r, "with a dockerd someone else serves", 0, 1)
	ln.Close()
	_ = r.Status(context.Background())
	assertReady(t, r, "once that dockerd is gone", 0, 0)
}

// TestReadyIsNotRaisedByAProbeThatRanAcrossAnExit: a probe that saw the
// daemon alive does not set the gauge to 1 when the daemon exited while
// it ran: the exit is the newer truth.
func TestReadyIsNotRaisedByAProbeThatRanAcrossAnExit(t *testing.T) {
	f := newFakes(t)
	r, _ := fakeRuntime(t, f, nil)
	before := r.exitCount(Dockerd)
	r.mu.Lock()
	r.exits[Dockerd]++ // what supervise does when a child exits
	r.mu.Unlock()
	r.setReady(Dockerd, true, before)
	assertReady(t, r, "after a probe across an exit", 0, 0)
	r.setReady(Dockerd, true, r.exitCount(Dockerd))
	assertReady(t, r, "after a later probe", 0, 1)
}
