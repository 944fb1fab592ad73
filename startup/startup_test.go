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
	p.Observe("listen tcp://127.0.0.1:0", time.Now().Add(-time.Millisecond))

	if end, ok := p.End("config"); !ok || end != 5*time.Millisecond {
		t.Errorf("End(config) = %v, %v; want 5ms, true", end, ok)
	}
	if end, ok := p.End("listen tcp://127.0.0.1:0"); !ok || end < time.Second {
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
