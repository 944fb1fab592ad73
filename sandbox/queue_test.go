package sandbox

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
)

func TestWorkQueueBounds(t *testing.T) {
	q := newWorkQueue("things", 1, 1, nil)
	first, err := q.run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	waiter, err := q.reserve()
	if err != nil {
		t.Fatalf("a place while one runs: %v", err)
	}
	if _, err := q.reserve(); !errors.Is(err, ErrBusy) {
		t.Fatalf("past the depth: %v, want ErrBusy", err)
	}
	// A place given up is free again; giving it up twice changes nothing.
	waiter.cancel()
	waiter.cancel()
	waiter, err = q.reserve()
	if err != nil {
		t.Fatalf("after a cancel: %v", err)
	}
	// Its turn comes when the first one releases its own.
	turn := make(chan func())
	go func() {
		release, err := waiter.wait(context.Background())
		if err != nil {
			t.Error(err)
		}
		turn <- release
	}()
	first()
	(<-turn)()
	// A wait whose context ends gives the place up.
	hold, _ := q.run(context.Background())
	p, err := q.reserve()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with an ended context: %v", err)
	}
	if _, err := q.reserve(); err != nil {
		t.Fatalf("the cancelled wait kept its place: %v", err)
	}
	hold()
	// The agent's own work is never refused, only made to wait.
	q2 := newWorkQueue("chores", 1, 0, nil)
	r1, _ := q2.run(context.Background())
	got := make(chan struct{})
	go func() {
		r2, err := q2.turn(context.Background())
		if err == nil {
			r2()
		}
		close(got)
	}()
	r1()
	<-got
}

// TestCreateBusy: past the starts' queue a create is refused with ErrBusy
// and leaves nothing; the ones queued all start.
func TestCreateBusy(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Workers, c.QueueDepth = 1, 1 })
	gate := make(chan struct{})
	h.backend.mu.Lock()
	h.backend.startGate = gate
	h.backend.mu.Unlock()
	h.create(Spec{ID: "one"})
	h.create(Spec{ID: "two"})
	if _, _, err := h.m.Create(context.Background(), Spec{ID: "three"}); !errors.Is(err, ErrBusy) {
		t.Fatalf("a third create: %v, want ErrBusy", err)
	}
	if _, err := h.m.Get("three"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the refused sandbox is there: %v", err)
	}
	// The same request again for a sandbox that exists is no new work.
	if _, created, err := h.m.Create(context.Background(), Spec{ID: "two"}); err != nil || created {
		t.Errorf("an idempotent create while full: %v, created %v", err, created)
	}
	close(gate)
	// Either may take the one worker first.
	sandboxtest.WaitFor(t, "both ready", func() bool { return h.state("one") == StateReady && h.state("two") == StateReady })
	info, created, err := h.m.Create(context.Background(), Spec{ID: "three"})
	if err != nil || !created {
		t.Fatalf("a create once the queue has room: %+v, %v, %v", info, created, err)
	}
	sandboxtest.WaitFor(t, "three ready", func() bool { return h.state("three") == StateReady })
}

// TestOnIdleAfterABurst: OnIdle is called once work has stopped for
// idleAfter, and never after Close.
func TestOnIdleAfterABurst(t *testing.T) {
	var idle atomic.Int32
	h := newHarness(t, func(c *Config) { c.OnIdle = func() { idle.Add(1) } })
	for _, id := range []string{"a", "b"} {
		h.createReady(Spec{ID: id})
		if _, err := h.m.Run(context.Background(), id, Process{Cmd: []string{"echo"}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Work that ends later (a start's last steps after its ready event)
	// only puts the call off.
	h.clock.Advance(idleAfter - time.Millisecond)
	if n := idle.Load(); n != 0 {
		t.Fatalf("OnIdle called %d times before the manager was quiet", n)
	}
	sandboxtest.WaitFor(t, "OnIdle", func() bool {
		h.clock.Advance(time.Millisecond)
		return idle.Load() > 0
	})
	if err := h.m.Remove(context.Background(), "a", true); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := idle.Load()
	h.clock.Advance(time.Hour)
	if got := idle.Load(); got != n {
		t.Errorf("OnIdle called after Close (%d times, then %d)", n, got)
	}
}
