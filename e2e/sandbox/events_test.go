package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// journal follows the agent's events through the SDK from after, in the
// background, with every reconnect the SDK makes; seqs returns what it has
// seen. cut, when set, is armed by the test to break the connection on its
// next read: the bytes that read brings are thrown away, as a connection
// that dies mid-event loses them.
type journal struct {
	mu         sync.Mutex
	events     []api.Event
	seen       chan struct{} // a token per event
	reconnects atomic.Int32
	err        error
	done       chan struct{}
}

func followEvents(t *testing.T, a *agentProc, after int64, cut *atomic.Bool) *journal {
	t.Helper()
	opts := []client.Option{}
	if cut != nil {
		opts = append(opts, client.WithTransport(func(base http.RoundTripper) http.RoundTripper {
			return cutter{base: base, cut: cut}
		}))
	}
	c := a.SDK(t, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	j := &journal{seen: make(chan struct{}, 1<<16), done: make(chan struct{})}
	connected := make(chan struct{}, 1)
	go func() {
		defer close(j.done)
		o := client.EventsOptions{
			After: &after,
			OnConnect: func() {
				select {
				case connected <- struct{}{}:
				default: // a reconnect: the test waits for the first only
				}
			},
			OnReconnect: func(error) { j.reconnects.Add(1) },
		}
		for ev, err := range c.Events(ctx, o) {
			if err != nil {
				j.mu.Lock()
				j.err = err
				j.mu.Unlock()
				return
			}
			j.mu.Lock()
			j.events = append(j.events, ev)
			j.mu.Unlock()
			j.seen <- struct{}{}
		}
	}()
	t.Cleanup(func() { cancel(); <-j.done })
	select {
	case <-connected:
	case <-j.done:
		t.Fatalf("GET /v1/events: %v", j.err)
	}
	return j
}

// waitFor reads until an event of id with action has been seen.
func (j *journal) waitFor(t *testing.T, id string, action api.EventAction) {
	t.Helper()
	ctx := reqCtx(t)
	for {
		j.mu.Lock()
		found := slices.ContainsFunc(j.events, func(e api.Event) bool {
			return e.SandboxId == id && e.Action == action
		})
		err := j.err
		j.mu.Unlock()
		if found {
			return
		}
		if err != nil {
			t.Fatalf("waiting for %s %s: the subscription ended: %v", id, action, err)
		}
		select {
		case <-j.seen:
		case <-ctx.Done():
			t.Fatalf("waiting for %s %s: %v", id, action, ctx.Err())
		}
	}
}

func (j *journal) seqs() []int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []int64
	for _, e := range j.events {
		out = append(out, e.Seq)
	}
	return out
}

// cutter breaks a response's body on the first read after cut is set.
type cutter struct {
	base http.RoundTripper
	cut  *atomic.Bool
}

func (c cutter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err == nil {
		resp.Body = &cutBody{ReadCloser: resp.Body, cut: c.cut}
	}
	return resp, err
}

type cutBody struct {
	io.ReadCloser
	cut *atomic.Bool
}

func (b *cutBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.cut.CompareAndSwap(true, false) {
		_ = b.Close()
		return 0, fmt.Errorf("the test cut the connection, dropping %d bytes: %w", n, io.ErrUnexpectedEOF)
	}
	return n, err
}

// replay reads the events the journal keeps after after, up to the first
// for which last is true.
func replay(t *testing.T, a *agentProc, after int64, last func(api.Event) bool) []api.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(reqCtx(t))
	defer cancel()
	var out []api.Event
	for ev, err := range a.SDK(t).Events(ctx, client.EventsOptions{After: &after}) {
		if err != nil {
			t.Fatalf("replay after %d: %v", after, err)
		}
		out = append(out, ev)
		if last(ev) {
			break
		}
	}
	return out
}

// is matches the event of sandbox id with action.
func is(id string, action api.EventAction) func(api.Event) bool {
	return func(e api.Event) bool { return e.SandboxId == id && e.Action == action }
}

func seqsOf(evs []api.Event) []int64 {
	out := make([]int64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

// checkIncreasing fails unless seqs only grow: no event twice, none out
// of order.
func checkIncreasing(t *testing.T, what string, seqs []int64) {
	t.Helper()
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("%s: seq %d after %d: %v", what, seqs[i], seqs[i-1], seqs)
		}
	}
}

// TestEventsResumeAfterACut: the connection of a subscriber dies twice
// mid-stream, once with an event in flight; the SDK resumes after the last
// seq it yielded, and the subscriber ends up with exactly the journal's
// events: none lost, none twice.
func TestEventsResumeAfterACut(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(filepath.Join(suite.dir, "events-cut")))
	var cut atomic.Bool
	j := followEvents(t, a, 0, &cut)

	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("cut-a")})
	j.waitFor(t, "cut-a", api.EventActionReady)
	cut.Store(true) // the next event's bytes are lost with the connection
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("cut-b")})
	j.waitFor(t, "cut-b", api.EventActionReady)
	cut.Store(true)
	a.remove(t, "cut-a", true)
	a.remove(t, "cut-b", true)
	j.waitFor(t, "cut-b", api.EventActionRemoved)

	got := j.seqs()
	checkIncreasing(t, "the resumed subscriber", got)
	if n := j.reconnects.Load(); n < 2 {
		t.Errorf("%d reconnects, want 2 (one per cut)", n)
	}
	want := seqsOf(replay(t, a, 0, is("cut-b", api.EventActionRemoved)))
	// Events after the last one replayed (port events of the machine's
	// listeners come at any time) are not the comparison's.
	if len(want) > 0 {
		got = slices.DeleteFunc(got, func(seq int64) bool { return seq > want[len(want)-1] })
	}
	if !slices.Equal(got, want) {
		t.Errorf("the subscriber saw %v, the journal keeps %v", got, want)
	}
}

// TestEventsAcrossAgentRestarts: seqs keep growing across a crash
// (SIGKILL) and a clean stop; a subscriber that stayed resumes across the
// crash by itself, and one that came back later gets exactly the events
// after the last seq it read.
func TestEventsAcrossAgentRestarts(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(filepath.Join(suite.dir, "events-restart")))
	stayed := followEvents(t, a, 0, nil)
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("rs-a")})
	stayed.waitFor(t, "rs-a", api.EventActionReady)
	before := stayed.seqs()
	last := before[len(before)-1]

	a.crashAndRestart(t)
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("rs-b")})
	back := followEvents(t, a, last, nil)
	back.waitFor(t, "rs-b", api.EventActionReady)
	afterCrash := back.seqs()
	checkIncreasing(t, "after the crash", append([]int64{last}, afterCrash...))
	stayed.waitFor(t, "rs-b", api.EventActionReady)
	if got, want := stayed.seqs(), append(slices.Clone(before), afterCrash...); !slices.Equal(got, want) {
		t.Errorf("the subscriber that stayed saw %v, want %v", got, want)
	}

	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := a.start(); err != nil {
		t.Fatal(err)
	}
	last = afterCrash[len(afterCrash)-1]
	a.remove(t, "rs-b", true)
	a.remove(t, "rs-a", true)
	afterStop := seqsOf(replay(t, a, last, is("rs-a", api.EventActionRemoved)))
	checkIncreasing(t, "after the clean restart", append([]int64{last}, afterStop...))
	// A clean stop records the exact next seq: nothing is skipped.
	if afterStop[0] != last+1 {
		t.Errorf("the first seq after a clean restart is %d, want %d", afterStop[0], last+1)
	}
}

// TestEventsSlowSubscriberCatchesUp: a subscriber that reads nothing while
// several hundred events happen gets every one of them, in order, once it
// reads again.
func TestEventsSlowSubscriberCatchesUp(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(filepath.Join(suite.dir, "events-slow")))
	const id, runs = "slow", 150
	ctx, cancel := context.WithCancel(reqCtx(t))
	defer cancel()
	after := int64(0)
	next, stop := iter.Pull2(a.SDK(t).Events(ctx, client.EventsOptions{After: &after}))
	defer stop()
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id)})
	// Nothing is read while the runs happen: four events each (running,
	// run.started, run.exited, idle).
	for range runs {
		a.run(t, id, api.RunRequest{Cmd: []string{"true"}})
	}
	var got []api.Event
	idle := 0
	for idle < runs {
		ev, err, ok := next()
		if !ok || err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, ev)
		if ev.Action == api.EventActionIdle {
			idle++
		}
	}
	last := got[len(got)-1].Seq
	want := seqsOf(replay(t, a, 0, func(e api.Event) bool { return e.Seq >= last }))
	if !slices.Equal(seqsOf(got), want) {
		t.Errorf("the slow subscriber caught up with %v, the journal keeps %v", seqsOf(got), want)
	}
	checkIncreasing(t, "the slow subscriber", seqsOf(got))
	a.remove(t, id, true)
}

// TestEventsOlderThanTheJournal: with a journal of 4 events, asking for
// what came after seq 0 once more has happened is a 410 that says where
// the journal begins, and asking from there accepts the gap.
func TestEventsOlderThanTheJournal(t *testing.T) {
	t.Parallel()
	a := newAgent(filepath.Join(suite.dir, "events-small"))
	a.extra = []string{"--event-journal-size", "4"}
	ownAgent(t, a)
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("small")})
	a.remove(t, "small", true)

	after := int64(0)
	var gone *client.GoneError
	for _, err := range a.SDK(t).Events(reqCtx(t), client.EventsOptions{After: &after}) {
		if !errors.As(err, &gone) {
			t.Fatalf("after=0 with a journal of 4: %v, want a 410 (*client.GoneError)", err)
		}
		break
	}
	if gone.Oldest <= 1 || gone.Err.Code != http.StatusGone {
		t.Fatalf("410 %+v, want the oldest kept seq above 1", gone)
	}
	got := replay(t, a, gone.Oldest-1, is("small", api.EventActionRemoved))
	if len(got) != 4 || got[0].Seq != gone.Oldest {
		t.Errorf("after the oldest-1: %v, want the 4 kept from %d", seqsOf(got), gone.Oldest)
	}
}
