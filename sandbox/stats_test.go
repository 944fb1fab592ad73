package sandbox

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"github.com/prometheus/client_golang/prometheus"
)

// statsBackend is the fake backend with stats: read answers each call.
type statsBackend struct {
	*fakeBackend
	mu    sync.Mutex
	calls []string
	read  func(id string) (Stats, error)
}

func (s *statsBackend) Stats(_ context.Context, id string) (Stats, error) {
	s.mu.Lock()
	s.calls = append(s.calls, id)
	read := s.read
	s.mu.Unlock()
	return read(id)
}

// newStatsManager is a Manager over backend and a fake clock, with one
// ready sandbox "s".
func newStatsManager(t *testing.T, backend Backend, clock *fakeClock) *Manager {
	t.Helper()
	dir := t.TempDir()
	m, err := newManager(context.Background(), Config{StateDir: dir, Registerer: prometheus.NewRegistry(), Now: clock.Now,
		IDRangeDir: filepath.Join(filepath.Dir(dir), "idranges")}, backend, clock.AfterFunc)
	if err != nil {
		t.Fatalf("newManager: %v", err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	if _, _, err := m.Create(context.Background(), Spec{ID: "s"}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	sandboxtest.WaitFor(t, "sandbox s ready", func() bool {
		info, err := m.Get("s")
		return err == nil && info.State == StateReady
	})
	return m
}

func TestStats(t *testing.T) {
	clock := newFakeClock()
	peak := uint64(4096)
	want := Stats{CPU: CPUStats{UsageUsec: 30, UserUsec: 20, SystemUsec: 10}, Memory: MemoryStats{Current: 1024, Peak: &peak}}
	fb := &statsBackend{fakeBackend: newFakeBackend(), read: func(string) (Stats, error) { return want, nil }}
	m := newStatsManager(t, fb, clock)
	ctx := context.Background()

	got, err := m.Stats(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(clock.Now()) || got.CPU != want.CPU || got.Memory.Current != 1024 || *got.Memory.Peak != peak {
		t.Errorf("got %+v, want %+v at %v", got, want, clock.Now())
	}

	if _, err := m.Stats(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown sandbox: %v, want ErrNotFound", err)
	}

	// A read that fails while the sandbox runs is the backend's error.
	broken := errors.New("cpu.stat: usage_usec \"x\" is not a number")
	fb.read = func(string) (Stats, error) { return Stats{}, broken }
	if _, err := m.Stats(ctx, "s"); !errors.Is(err, broken) || errors.Is(err, ErrConflict) {
		t.Errorf("a broken read: %v, want the backend's error", err)
	}

	// A read that fails because the sandbox stopped meanwhile says so.
	fb.read = func(id string) (Stats, error) {
		if _, err := m.Stop(ctx, id, time.Second); err != nil {
			t.Errorf("Stop: %v", err)
		}
		return Stats{}, errors.New("no such file or directory")
	}
	_, err = m.Stats(ctx, "s")
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "is stopped") {
		t.Errorf("stopped during the read: %v, want ErrConflict saying it stopped", err)
	}

	calls := len(fb.calls)
	if _, err := m.Stats(ctx, "s"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `sandbox "s" is stopped`) {
		t.Errorf("stopped sandbox: %v, want ErrConflict", err)
	}
	if len(fb.calls) != calls {
		t.Error("the backend was asked about a stopped sandbox")
	}
}

func TestStatsWithoutBackendSupport(t *testing.T) {
	m := newStatsManager(t, newFakeBackend(), newFakeClock())
	if _, err := m.Stats(context.Background(), "s"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("got %v, want ErrUnavailable", err)
	}
}
