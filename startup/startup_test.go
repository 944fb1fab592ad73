package startup

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestPhases(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	start := time.Now().Add(-time.Second)
	p := New(reg, start)
	p.Record("config", 2*time.Millisecond, 5*time.Millisecond)
	p.Observe("listen_control_tcp", time.Now().Add(-time.Millisecond))

	if end, ok := p.End("config"); !ok || end != 5*time.Millisecond {
		t.Errorf("End(config) = %v, %v; want 5ms, true", end, ok)
	}
	if end, ok := p.End("listen_control_tcp"); !ok || end < time.Second {
		t.Errorf("End(listen) = %v, %v; want at least 1s after start", end, ok)
	}
	if got := testutil.ToFloat64(p.duration.WithLabelValues("config")); got != 0.002 {
		t.Errorf("config duration = %v, want 0.002", got)
	}
	if got := testutil.ToFloat64(p.end.WithLabelValues("config")); got != 0.005 {
		t.Errorf("config end = %v, want 0.005", got)
	}
	if n, err := testutil.GatherAndCount(reg, "arcbox_agent_start_time_seconds"); err != nil || n != 1 {
		t.Errorf("start_time_seconds series = %d, %v; want 1", n, err)
	}
}

// TestRuntimeFamilyIsApart checks that the runtime's phases land in their
// own family, beside the agent's on the same registry, measured from the
// same process start.
func TestRuntimeFamilyIsApart(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	start := time.Now().Add(-time.Second)
	agent := New(reg, start)
	rt := NewRuntime(reg, agent.Start())
	agent.Record("config", time.Millisecond, 2*time.Millisecond)
	rt.Record("ensure", 3*time.Second, 4*time.Second)

	if _, ok := agent.End("ensure"); ok {
		t.Error("a runtime phase was recorded in the startup family")
	}
	if end, ok := rt.End("ensure"); !ok || end != 4*time.Second {
		t.Errorf("runtime End(ensure) = %v, %v; want 4s, true", end, ok)
	}
	for name, want := range map[string]int{
		"arcbox_agent_startup_phase_duration_seconds": 1,
		"arcbox_agent_startup_phase_end_seconds":      1,
		"arcbox_agent_runtime_phase_duration_seconds": 1,
		"arcbox_agent_runtime_phase_end_seconds":      1,
	} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != want {
			t.Errorf("%s series = %d, %v; want %d", name, n, err, want)
		}
	}
	if got := testutil.ToFloat64(rt.duration.WithLabelValues("ensure")); got != 3 {
		t.Errorf("runtime ensure duration = %v, want 3", got)
	}
}

func TestProcessStartIsRecent(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	start := ProcessStart()
	age := time.Since(start)
	// The test binary started before this test ran, and not days ago.
	if age < 0 || age > time.Hour {
		t.Fatalf("process started %v ago; want a small positive age", age)
	}
}
