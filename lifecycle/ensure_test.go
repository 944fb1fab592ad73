package lifecycle

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The seed agent's ensure_runtime tests, one by one, then what the seed
// did not test. Start and probe functions that must not run fail the test.

func readyResponse() EnsureResult {
	return EnsureResult{Ready: true, Endpoint: "vsock:2375", Message: "docker socket ready", Status: StatusStarted}
}

func failedResponse() EnsureResult {
	return EnsureResult{Endpoint: "", Message: "docker socket missing", Status: StatusFailed}
}

func startReturning(r EnsureResult) startFunc {
	return func(context.Context, func(Phase)) EnsureResult { return r }
}

func mustNotStart(t *testing.T) startFunc {
	return func(context.Context, func(Phase)) EnsureResult {
		t.Error("start must not be called")
		return failedResponse()
	}
}

func mustNotProbe(t *testing.T) probeFunc {
	return func(context.Context) EnsureResult {
		t.Error("probe must not be called")
		return failedResponse()
	}
}

func newTestEnsurer(t *testing.T) *ensurer {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return newEnsurer(ctx)
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func (e *ensurer) waiters() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.waiting
}

// test_ensure_runtime_first_call_started
func TestEnsureFirstCallStarted(t *testing.T) {
	e := newTestEnsurer(t)
	r := e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t))
	if !r.Ready || r.Status != StatusStarted || r.Endpoint != "vsock:2375" {
		t.Fatalf("got %+v, want ready, started, vsock:2375", r)
	}
}

// test_ensure_runtime_second_call_reused
func TestEnsureSecondCallReused(t *testing.T) {
	e := newTestEnsurer(t)
	if r := e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t)); r.Status != StatusStarted {
		t.Fatalf("first call: got %+v, want started", r)
	}
	r := e.ensure(context.Background(), true, mustNotStart(t), mustNotProbe(t))
	if !r.Ready || r.Status != StatusReused {
		t.Fatalf("second call: got %+v, want ready, reused", r)
	}
	if r.Endpoint != "vsock:2375" || r.Message != "docker socket ready" {
		t.Fatalf("second call: got %+v, want the first call's endpoint and message", r)
	}
}

// test_ensure_runtime_20_sequential_calls_no_error
func TestEnsure20SequentialCallsNoError(t *testing.T) {
	e := newTestEnsurer(t)
	for i := range 20 {
		r := e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t))
		want := StatusReused
		if i == 0 {
			want = StatusStarted
		}
		if !r.Ready || r.Status != want {
			t.Fatalf("call %d: got %+v, want ready, %s", i, r, want)
		}
	}
}

// test_ensure_runtime_probe_only_no_start
func TestEnsureProbeOnlyNoStart(t *testing.T) {
	e := newTestEnsurer(t)
	r := e.ensure(context.Background(), false, mustNotStart(t), func(context.Context) EnsureResult {
		return EnsureResult{Message: "docker not available", Status: StatusFailed}
	})
	if r.Ready || r.Status != StatusFailed || r.Message != "docker not available" {
		t.Fatalf("got %+v, want the probe's failed answer", r)
	}
	if s := e.snapshot(); s != stateNotStarted {
		t.Fatalf("state after a probe: got %s, want not_started", s)
	}
}

// test_ensure_runtime_failed_then_retry_succeeds
func TestEnsureFailedThenRetrySucceeds(t *testing.T) {
	e := newTestEnsurer(t)
	if r := e.ensure(context.Background(), true, startReturning(failedResponse()), mustNotProbe(t)); r.Ready || r.Status != StatusFailed {
		t.Fatalf("first call: got %+v, want failed", r)
	}
	if r := e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t)); !r.Ready || r.Status != StatusStarted {
		t.Fatalf("retry: got %+v, want ready, started", r)
	}
	if r := e.ensure(context.Background(), true, mustNotStart(t), mustNotProbe(t)); !r.Ready || r.Status != StatusReused {
		t.Fatalf("third call: got %+v, want ready, reused", r)
	}
}

// concurrentCallers runs n callers of ensure at once with a start that
// blocks until every other caller waits for it, and returns their answers
// and how many times start ran.
func concurrentCallers(t *testing.T, n int, outcome EnsureResult) ([]EnsureResult, int32) {
	t.Helper()
	e := newTestEnsurer(t)
	var starts atomic.Int32
	release := make(chan struct{})
	start := func(context.Context, func(Phase)) EnsureResult {
		starts.Add(1)
		<-release
		return outcome
	}
	results := make([]EnsureResult, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			results[i] = e.ensure(context.Background(), true, start, mustNotProbe(t))
		}()
	}
	close(gate)
	// Every caller, driver included, is waiting on the one attempt.
	waitUntil(t, time.Minute, "every caller to wait", func() bool { return e.waiters() == n })
	close(release)
	wg.Wait()
	return results, starts.Load()
}

// test_ensure_runtime_concurrent_5_callers_consistent
func TestEnsureConcurrent5CallersConsistent(t *testing.T) {
	results, starts := concurrentCallers(t, 5, readyResponse())
	count := map[string]int{}
	for i, r := range results {
		if !r.Ready {
			t.Errorf("caller %d: got %+v, want ready", i, r)
		}
		count[r.Status]++
	}
	if count[StatusStarted] != 1 || count[StatusReused] != 4 {
		t.Errorf("statuses: got %v, want 1 started and 4 reused", count)
	}
	if starts != 1 {
		t.Errorf("start ran %d times, want 1", starts)
	}
}

// test_ensure_runtime_concurrent_5_callers_failure_consistent
func TestEnsureConcurrent5CallersFailureConsistent(t *testing.T) {
	results, starts := concurrentCallers(t, 5, failedResponse())
	for i, r := range results {
		if r.Ready || r.Status != StatusFailed || r.Message != "docker socket missing" {
			t.Errorf("caller %d: got %+v, want failed with the driver's message", i, r)
		}
	}
	if starts != 1 {
		t.Errorf("start ran %d times, want 1", starts)
	}
}

// test_ensure_runtime_no_lost_wakeup_when_driver_finishes_fast: a waiter
// that joins while the driver's start runs, and a driver that finishes
// right after, used to hang the seed intermittently. Here each attempt has
// its own channel, closed once: a waiter cannot miss it.
func TestEnsureNoLostWakeupWhenDriverFinishesFast(t *testing.T) {
	for range 200 {
		e := newTestEnsurer(t)
		entered := make(chan struct{})
		release := make(chan struct{})
		driver := make(chan EnsureResult, 1)
		go func() {
			driver <- e.ensure(context.Background(), true, func(context.Context, func(Phase)) EnsureResult {
				close(entered)
				<-release
				return readyResponse()
			}, mustNotProbe(t))
		}()
		<-entered // the state is Starting
		waiter := make(chan EnsureResult, 1)
		go func() { waiter <- e.ensure(context.Background(), true, mustNotStart(t), mustNotProbe(t)) }()
		close(release) // races with the waiter's registration, on purpose
		for name, ch := range map[string]chan EnsureResult{"driver": driver, "waiter": waiter} {
			want := StatusStarted
			if name == "waiter" {
				want = StatusReused
			}
			select {
			case r := <-ch:
				if !r.Ready || r.Status != want {
					t.Fatalf("%s: got %+v, want ready, %s", name, r, want)
				}
			case <-time.After(time.Minute):
				t.Fatalf("%s hung: lost wake-up", name)
			}
		}
	}
}

// test_ensure_runtime_state_machine_transitions
func TestEnsureStateMachineTransitions(t *testing.T) {
	e := newTestEnsurer(t)
	if s := e.snapshot(); s != stateNotStarted {
		t.Fatalf("initial state: got %s, want not_started", s)
	}
	e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t))
	if s := e.snapshot(); s != stateReady {
		t.Fatalf("after a successful ensure: got %s, want ready", s)
	}
}

// test_ensure_runtime_state_machine_failed_to_ready
func TestEnsureStateMachineFailedToReady(t *testing.T) {
	e := newTestEnsurer(t)
	e.ensure(context.Background(), true, startReturning(failedResponse()), mustNotProbe(t))
	if s := e.snapshot(); s != stateFailed {
		t.Fatalf("after a failed ensure: got %s, want failed", s)
	}
	e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t))
	if s := e.snapshot(); s != stateReady {
		t.Fatalf("after the retry: got %s, want ready", s)
	}
}

// test_ensure_runtime_probe_after_ready_returns_reused
func TestEnsureProbeAfterReadyReturnsReused(t *testing.T) {
	e := newTestEnsurer(t)
	e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t))
	r := e.ensure(context.Background(), false, mustNotStart(t), mustNotProbe(t))
	if !r.Ready || r.Status != StatusReused {
		t.Fatalf("got %+v, want ready, reused from the cached state", r)
	}
}

// Beyond the seed.

func TestEnsure1000ConcurrentCallersOneStart(t *testing.T) {
	results, starts := concurrentCallers(t, 1000, readyResponse())
	count := map[string]int{}
	for _, r := range results {
		if !r.Ready {
			t.Fatalf("got %+v, want ready", r)
		}
		count[r.Status]++
	}
	if starts != 1 || count[StatusStarted] != 1 || count[StatusReused] != 999 {
		t.Fatalf("got %d starts and %v, want 1 start, 1 started, 999 reused", starts, count)
	}
}

func TestEnsureProbeOnlyNeverStartsEvenWhileStarting(t *testing.T) {
	e := newTestEnsurer(t)
	release := make(chan struct{})
	done := make(chan EnsureResult, 1)
	go func() {
		done <- e.ensure(context.Background(), true, func(context.Context, func(Phase)) EnsureResult {
			<-release
			return readyResponse()
		}, mustNotProbe(t))
	}()
	waitUntil(t, time.Minute, "the start to run", func() bool { return e.snapshot() == stateStarting })
	probed := false
	r := e.ensure(context.Background(), false, mustNotStart(t), func(context.Context) EnsureResult {
		probed = true
		return EnsureResult{Message: "docker socket missing: /x", Status: StatusFailed}
	})
	if !probed || r.Status != StatusFailed {
		t.Fatalf("probe while starting: got %+v (probed %v), want the probe's answer without waiting", r, probed)
	}
	close(release)
	if r := <-done; r.Status != StatusStarted {
		t.Fatalf("driver: got %+v", r)
	}
}

// TestEnsureWaiterContextEndsStartGoesOn: callers that give up (the HTTP
// client hung up), the driver's caller included, get a failed answer naming
// their context's error; the start is not cancelled, and its outcome is
// there for the next caller.
func TestEnsureWaiterContextEndsStartGoesOn(t *testing.T) {
	e := newTestEnsurer(t)
	release := make(chan struct{})
	var startCtxErr atomic.Value
	finished := make(chan struct{})
	start := func(ctx context.Context, _ func(Phase)) EnsureResult {
		<-release
		if ctx.Err() != nil {
			startCtxErr.Store(ctx.Err())
		}
		close(finished)
		return readyResponse()
	}
	driverCtx, cancelDriver := context.WithCancel(context.Background())
	waiterCtx, cancelWaiter := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancelWaiter()
	results := make(chan EnsureResult, 2)
	go func() { results <- e.ensure(driverCtx, true, start, mustNotProbe(t)) }()
	waitUntil(t, time.Minute, "the driver to wait", func() bool { return e.waiters() == 1 })
	go func() { results <- e.ensure(waiterCtx, true, mustNotStart(t), mustNotProbe(t)) }()
	cancelDriver()
	for range 2 {
		r := <-results
		if r.Ready || r.Status != StatusFailed || !strings.Contains(r.Message, "context") {
			t.Fatalf("caller that gave up: got %+v, want failed naming its context's error", r)
		}
	}
	if s := e.snapshot(); s != stateStarting {
		t.Fatalf("state after the callers left: got %s, want starting", s)
	}
	close(release)
	<-finished
	if err, _ := startCtxErr.Load().(error); err != nil {
		t.Fatalf("the start's context ended with the callers': %v", err)
	}
	r := e.ensure(context.Background(), true, mustNotStart(t), mustNotProbe(t))
	if !r.Ready || r.Status != StatusReused {
		t.Fatalf("next caller: got %+v, want ready, reused", r)
	}
}

func TestEnsureInvalidateWhenReadyStartsAgain(t *testing.T) {
	e := newTestEnsurer(t)
	e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t))
	e.invalidate()
	if s := e.snapshot(); s != stateNotStarted {
		t.Fatalf("after invalidate: got %s, want not_started", s)
	}
	// A probe does not start it again.
	probe := func(context.Context) EnsureResult { return failedResponse() }
	if r := e.ensure(context.Background(), false, mustNotStart(t), probe); r.Status != StatusFailed {
		t.Fatalf("probe after invalidate: got %+v, want failed", r)
	}
	if r := e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t)); r.Status != StatusStarted {
		t.Fatalf("ensure after invalidate: got %+v, want started", r)
	}
}

func TestEnsureInvalidateDuringStartIsNotLost(t *testing.T) {
	e := newTestEnsurer(t)
	r := e.ensure(context.Background(), true, func(context.Context, func(Phase)) EnsureResult {
		e.invalidate() // a daemon exits while the start runs
		return readyResponse()
	}, mustNotProbe(t))
	if r.Status != StatusStarted {
		t.Fatalf("driver: got %+v, want the start's own answer", r)
	}
	if s := e.snapshot(); s != stateNotStarted {
		t.Fatalf("state: got %s, want not_started (the next ensure must start again)", s)
	}
}

func TestEnsureStartPanicIsAFailure(t *testing.T) {
	e := newTestEnsurer(t)
	r := e.ensure(context.Background(), true, func(context.Context, func(Phase)) EnsureResult { panic("boom") }, mustNotProbe(t))
	if r.Status != StatusFailed || !strings.Contains(r.Message, "boom") {
		t.Fatalf("got %+v, want failed naming the panic", r)
	}
	if r := e.ensure(context.Background(), true, startReturning(readyResponse()), mustNotProbe(t)); r.Status != StatusStarted {
		t.Fatalf("retry after a panic: got %+v, want started", r)
	}
}

func TestEnsureCloseWaitsForTheStartAndRefusesNewOnes(t *testing.T) {
	base, cancel := context.WithCancel(context.Background())
	e := newEnsurer(base)
	started := make(chan struct{})
	go e.ensure(context.Background(), true, func(ctx context.Context, _ func(Phase)) EnsureResult {
		close(started)
		<-ctx.Done() // a start abandons when the owner shuts down
		return EnsureResult{Status: StatusFailed, Message: "abandoned"}
	}, mustNotProbe(t))
	<-started
	cancel()
	if err := e.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := e.ensure(context.Background(), true, mustNotStart(t), mustNotProbe(t))
	if r.Status != StatusFailed || !strings.Contains(r.Message, "shut down") {
		t.Fatalf("after close: got %+v, want failed, shut down", r)
	}
}

func TestEnsureInvalidTransitionPanics(t *testing.T) {
	e := newTestEnsurer(t)
	defer func() {
		if recover() == nil {
			t.Fatal("ready -> starting did not panic")
		}
	}()
	e.mu.Lock()
	e.state = stateReady
	e.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.transition(stateStarting)
}
