package client_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/client"
)

func sandboxStats(i int) string {
	return fmt.Sprintf(`{"sandbox_id":"box","timestamp":%d,"cpu":{"usage_usec":%d,"user_usec":1,"system_usec":1},"memory":{"current_bytes":4096},"pids":{"current":2},"pressure":{}}`, i, i)
}

// TestStats: one reading, and a watch that yields each line and ends
// with the stream (the sandbox stopped), with the interval as the agent
// takes it.
func TestStats(t *testing.T) {
	var mu sync.Mutex
	var intervals []string
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		every := r.URL.Query().Get("interval")
		mu.Lock()
		intervals = append(intervals, every)
		mu.Unlock()
		switch {
		case r.URL.Path == "/v1/sandboxes/gone/stats":
			writeError(w, http.StatusConflict, `sandbox "gone" is stopped`)
		case r.URL.Path == "/v1/stats" && every == "":
			writeJSON(w, http.StatusOK, `{"timestamp":1,"memory":{"total_bytes":8,"available_bytes":4,"used_bytes":4,"swap_total_bytes":0,"swap_free_bytes":0},"load_average":[0,0,0],"pressure":{}}`)
		case r.URL.Path == "/v1/stats":
			// The agent is cut off mid-line: an error, not an end.
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = io.WriteString(w, `{"timestamp":1,"memory":{"total_bytes":8,"availa`)
			_ = http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		case every == "":
			writeJSON(w, http.StatusOK, sandboxStats(7))
		default:
			w.Header().Set("Content-Type", "application/x-ndjson")
			for i := range 3 {
				_, _ = io.WriteString(w, sandboxStats(i)+"\n")
			}
		}
	}))
	ctx := testCtx(t)
	if st, err := c.SandboxStats(ctx, "box"); err != nil || st.Cpu.UsageUsec != 7 || st.Memory.CurrentBytes != 4096 {
		t.Errorf("stats: %+v, %v", st, err)
	}
	var got []int64
	for st, err := range c.WatchSandboxStats(ctx, "box", 1500*time.Millisecond) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, st.Cpu.UsageUsec)
	}
	if fmt.Sprint(got) != "[0 1 2]" {
		t.Errorf("watched %v", got)
	}
	var e *client.Error
	for _, err := range c.WatchSandboxStats(ctx, "gone", time.Second) {
		if !errors.As(err, &e) || e.Code != 409 {
			t.Errorf("a stopped sandbox: %v", err)
		}
	}
	if st, err := c.GuestStats(ctx); err != nil || st.Memory.TotalBytes != 8 {
		t.Errorf("guest stats: %+v, %v", st, err)
	}
	n := 0
	for _, err := range c.WatchGuestStats(ctx, 2*time.Minute) {
		if n++; err == nil || !strings.Contains(err.Error(), "broke") {
			t.Errorf("a cut stream: %v", err)
		}
	}
	for _, bad := range []time.Duration{0, 99 * time.Millisecond, time.Hour + time.Second, 1500 * time.Microsecond} {
		for _, err := range c.WatchGuestStats(ctx, bad) {
			if err == nil || !strings.Contains(err.Error(), "interval") {
				t.Errorf("interval %v: %v", bad, err)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"", "1500ms", "1s", "", "2m"}; fmt.Sprint(intervals) != fmt.Sprint(want) {
		t.Errorf("intervals %q, want %q", intervals, want)
	}
	if n != 1 {
		t.Errorf("the cut stream yielded %d times", n)
	}
}
