package lifecycle

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// phaseLog collects the phases a watch is told, safe for the start's
// goroutine and the test's.
type phaseLog struct {
	mu     sync.Mutex
	phases []Phase
}

func (l *phaseLog) add(p Phase) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.phases = append(l.phases, p)
}

func (l *phaseLog) names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for _, p := range l.phases {
		names = append(names, p.Name)
	}
	return names
}

// TestEnsureWatchSeesTheAttemptsPhases: the driver's watch is told each
// phase as the start reports it, before Ensure returns; a caller that
// joins the start later is told the phases that ended before it joined,
// then the rest; a caller of a ready runtime is told nothing.
func TestEnsureWatchSeesTheAttemptsPhases(t *testing.T) {
	e := newTestEnsurer(t)
	reported := make(chan string)
	proceed := make(chan struct{})
	start := func(_ context.Context, report func(Phase)) EnsureResult {
		for _, name := range []string{PhaseDataVolume, PhaseContainerdReady} {
			report(Phase{Name: name, Took: time.Millisecond})
			reported <- name
		}
		<-proceed
		report(Phase{Name: PhaseDockerdReady, Took: time.Millisecond})
		report(Phase{Name: PhaseEnsure, Took: 3 * time.Millisecond, Status: StatusStarted})
		return readyResponse()
	}
	var driver, joiner phaseLog
	driverDone := make(chan EnsureResult)
	go func() {
		driverDone <- e.ensure(WithPhaseWatch(context.Background(), driver.add), true, start, mustNotProbe(t))
	}()
	<-reported
	<-reported
	if got := driver.names(); !slices.Equal(got, []string{PhaseDataVolume, PhaseContainerdReady}) {
		t.Fatalf("the driver's watch, mid-start: %v", got)
	}
	joinerDone := make(chan EnsureResult)
	go func() {
		joinerDone <- e.ensure(WithPhaseWatch(context.Background(), joiner.add), true, mustNotStart(t), mustNotProbe(t))
	}()
	waitUntil(t, time.Minute, "the second caller to wait", func() bool { return e.waiters() == 2 })
	close(proceed)
	want := []string{PhaseDataVolume, PhaseContainerdReady, PhaseDockerdReady, PhaseEnsure}
	if r := <-driverDone; r.Status != StatusStarted {
		t.Errorf("driver: %+v", r)
	}
	if r := <-joinerDone; r.Status != StatusReused {
		t.Errorf("joiner: %+v", r)
	}
	if got := driver.names(); !slices.Equal(got, want) {
		t.Errorf("the driver's watch: %v, want %v", got, want)
	}
	if got := joiner.names(); !slices.Equal(got, want) {
		t.Errorf("the joiner's watch (joined mid-start): %v, want %v", got, want)
	}
	if last := joiner.phases[len(joiner.phases)-1]; last.Status != StatusStarted || last.Took != 3*time.Millisecond {
		t.Errorf("the ensure phase: %+v, want the start's status and time", last)
	}

	var ready phaseLog
	if r := e.ensure(WithPhaseWatch(context.Background(), ready.add), true, mustNotStart(t), mustNotProbe(t)); r.Status != StatusReused {
		t.Errorf("ready: %+v", r)
	}
	if got := ready.names(); len(got) != 0 {
		t.Errorf("a watch on a ready runtime was told %v", got)
	}
}

// TestEnsureWatchEndsWithTheCall: a caller that gives up is told nothing
// after Ensure returns, and the start it left goes on to the end.
func TestEnsureWatchEndsWithTheCall(t *testing.T) {
	e := newTestEnsurer(t)
	proceed := make(chan struct{})
	ended := make(chan struct{})
	start := func(_ context.Context, report func(Phase)) EnsureResult {
		report(Phase{Name: PhaseDataVolume})
		<-proceed
		report(Phase{Name: PhaseEnsure, Status: StatusStarted})
		close(ended)
		return readyResponse()
	}
	var gaveUp phaseLog
	ctx, cancel := context.WithCancel(WithPhaseWatch(context.Background(), gaveUp.add))
	done := make(chan EnsureResult)
	go func() { done <- e.ensure(ctx, true, start, mustNotProbe(t)) }()
	waitUntil(t, time.Minute, "the first phase", func() bool { return len(gaveUp.names()) == 1 })
	cancel()
	if r := <-done; r.Status != StatusFailed {
		t.Errorf("a caller that gave up: %+v, want failed", r)
	}
	close(proceed)
	<-ended
	if got := gaveUp.names(); !slices.Equal(got, []string{PhaseDataVolume}) {
		t.Errorf("a caller that gave up was told %v, want only what ended before", got)
	}
	waitUntil(t, time.Minute, "the start to leave the runtime ready", func() bool { return e.snapshot() == stateReady })
}

// TestPhaseWatchFromContext: the watch set on a context is the one
// PhaseWatch returns; a context without one has none.
func TestPhaseWatchFromContext(t *testing.T) {
	if PhaseWatch(context.Background()) != nil {
		t.Error("a bare context has a watch")
	}
	var l phaseLog
	PhaseWatch(WithPhaseWatch(context.Background(), l.add))(Phase{Name: PhaseEnsure})
	if got := l.names(); !slices.Equal(got, []string{PhaseEnsure}) {
		t.Errorf("the watch was told %v", got)
	}
}
