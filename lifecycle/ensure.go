package lifecycle

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// Ensure statuses, as the API reports them.
const (
	// StatusStarted is answered to the caller whose call drove a start that
	// started a daemon and ended with dockerd ready.
	StatusStarted = "started"
	// StatusReused is answered once the runtime is ready, to every caller
	// but the one that drove the start, and to that one when its start
	// found every daemon serving already (adopted from an earlier agent,
	// or not the agent's) and started nothing.
	StatusReused = "reused"
	// StatusFailed is answered when the runtime is not ready; Message says why.
	StatusFailed = "failed"
)

// EnsureResult is the answer to Ensure.
type EnsureResult struct {
	// Ready reports whether dockerd answers on its socket.
	Ready bool
	// Endpoint is where the host reaches dockerd (Config.Endpoint).
	Endpoint string
	// Message says what was done, or why the runtime is not ready.
	Message string
	// Status is StatusStarted, StatusReused or StatusFailed.
	Status string
}

// ensureState is a state of the ensure state machine.
type ensureState int

const (
	// stateNotStarted: no start has been attempted, or the runtime went
	// down after it was ready (a daemon exited).
	stateNotStarted ensureState = iota
	// stateStarting: one start attempt is running; callers wait for it.
	stateStarting
	// stateReady: the last attempt ended with dockerd ready.
	stateReady
	// stateFailed: the last attempt failed; the next caller that asks for
	// a start retries.
	stateFailed
)

func (s ensureState) String() string {
	switch s {
	case stateNotStarted:
		return "not_started"
	case stateStarting:
		return "starting"
	case stateReady:
		return "ready"
	case stateFailed:
		return "failed"
	}
	return fmt.Sprintf("ensureState(%d)", int(s))
}

// validTransitions lists every transition the machine may take; any other
// is a bug and panics.
var validTransitions = map[[2]ensureState]bool{
	{stateNotStarted, stateStarting}: true,
	{stateFailed, stateStarting}:     true,
	{stateStarting, stateReady}:      true,
	{stateStarting, stateFailed}:     true,
	{stateStarting, stateNotStarted}: true, // ready, but a daemon exited meanwhile
	{stateReady, stateNotStarted}:    true, // a daemon exited
}

// attempt is one run of the start function. done is closed when it ends,
// after result is set, so a waiter that selects on done can never miss the
// end of the attempt it joined, however fast the start was.
type attempt struct {
	done   chan struct{}
	result EnsureResult
	// stale is set when a daemon exited while the attempt ran: a ready
	// outcome then leaves the machine in stateNotStarted, not stateReady.
	stale bool
	// phases are the phases the attempt has ended so far, told to each
	// watch that joins later; watches are those of the callers waiting
	// on it. Both are guarded by the ensurer's mu.
	phases  []Phase
	watches []*phaseWatch
}

// phaseWatch is one caller's watch on an attempt (a pointer, so that the
// caller removes its own).
type phaseWatch struct{ fn func(Phase) }

// startFunc runs a start sequence. It is given a context detached from the
// caller's request, which ends only with the machine's own lifetime, and
// tells report each phase as it ends.
type startFunc func(ctx context.Context, report func(Phase)) EnsureResult

// probeFunc reports the runtime's state without starting anything.
type probeFunc func(ctx context.Context) EnsureResult

// ensurer is the ensure state machine: it serialises start attempts and
// shares each attempt's outcome with every caller that waited for it. It
// knows nothing of daemons: the start and probe functions do the work.
type ensurer struct {
	// base is the context starts run with: detached from any request,
	// cancelled when the owner shuts down.
	base context.Context

	mu      sync.Mutex
	state   ensureState
	ready   EnsureResult // the outcome that made the state stateReady
	failed  string       // the message of the last failed attempt
	current *attempt     // non-nil exactly in stateStarting
	waiting int          // callers blocked on current (read by tests)
	closed  bool         // no attempt starts any more
}

func newEnsurer(base context.Context) *ensurer {
	return &ensurer{base: base}
}

// transition moves the machine to state to. e.mu must be held.
func (e *ensurer) transition(to ensureState) {
	if !validTransitions[[2]ensureState{e.state, to}] {
		panic(fmt.Sprintf("lifecycle: invalid ensure transition %s -> %s", e.state, to))
	}
	e.state = to
}

// snapshot returns the state, for tests and logs.
func (e *ensurer) snapshot() ensureState {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state
}

// ensure is the seed agent's ensure_runtime, with a channel per attempt:
//
//   - ready: "reused" at once, neither start nor probe is called;
//   - startIfNeeded false: probe's answer, nothing is started;
//   - not started or failed: this caller becomes the driver, start runs
//     (in its own goroutine, with e.base) and the driver gets its result
//     verbatim ("started" or "failed");
//   - starting: the caller waits for the running attempt and gets "reused"
//     with its endpoint and message if it made the runtime ready, else
//     "failed" with its message.
//
// A caller whose ctx ends while it waits, driver included, gets a failed
// answer naming ctx's error; the attempt goes on and its outcome is kept
// for the next caller. A caller whose ctx carries a watch (WithPhaseWatch)
// is told the attempt's phases while it waits.
func (e *ensurer) ensure(ctx context.Context, startIfNeeded bool, start startFunc, probe probeFunc) EnsureResult {
	e.mu.Lock()
	if e.state == stateReady {
		r := reused(e.ready)
		e.mu.Unlock()
		return r
	}
	if !startIfNeeded {
		e.mu.Unlock()
		return probe(ctx)
	}
	a := e.current
	driver := a == nil
	if driver {
		if e.closed {
			e.mu.Unlock()
			return EnsureResult{Status: StatusFailed, Message: "runtime is shut down"}
		}
		a = &attempt{done: make(chan struct{})}
		e.current = a
		e.transition(stateStarting)
		go e.run(a, start)
	}
	e.waiting++
	w := a.watch(PhaseWatch(ctx))
	e.mu.Unlock()

	select {
	case <-a.done:
	case <-ctx.Done():
		e.mu.Lock()
		e.waiting--
		a.unwatch(w)
		e.mu.Unlock()
		return EnsureResult{
			Status:  StatusFailed,
			Message: fmt.Sprintf("stopped waiting for the runtime to start (it goes on): %v", context.Cause(ctx)),
		}
	}
	e.mu.Lock()
	e.waiting--
	a.unwatch(w)
	e.mu.Unlock()
	if driver {
		return a.result
	}
	if a.result.Ready {
		return reused(a.result)
	}
	return EnsureResult{Status: StatusFailed, Message: a.result.Message}
}

// run runs one attempt and publishes its outcome.
func (e *ensurer) run(a *attempt, start startFunc) {
	var res EnsureResult
	func() {
		defer func() {
			if p := recover(); p != nil {
				res = EnsureResult{Status: StatusFailed, Message: fmt.Sprintf("runtime start panicked: %v", p)}
			}
		}()
		res = start(e.base, func(p Phase) { e.report(a, p) })
	}()

	e.mu.Lock()
	defer e.mu.Unlock()
	a.result = res
	switch {
	case res.Ready && (a.stale || e.closed):
		e.transition(stateNotStarted)
	case res.Ready:
		e.ready = res
		e.transition(stateReady)
	default:
		e.failed = res.Message
		e.transition(stateFailed)
	}
	e.current = nil
	close(a.done)
}

// report tells every watch of a the phase that has ended, and keeps it
// for those that join later.
func (e *ensurer) report(a *attempt, p Phase) {
	e.mu.Lock()
	defer e.mu.Unlock()
	a.phases = append(a.phases, p)
	for _, w := range a.watches {
		w.fn(p)
	}
}

// watch adds fn as a watch of a, telling it first the phases that have
// ended already, and returns it for unwatch; nil fn: none. e.mu is held,
// so no phase is told between the replay and the first live one.
func (a *attempt) watch(fn func(Phase)) *phaseWatch {
	if fn == nil {
		return nil
	}
	for _, p := range a.phases {
		fn(p)
	}
	w := &phaseWatch{fn: fn}
	a.watches = append(a.watches, w)
	return w
}

// unwatch removes w (nil: none); e.mu is held. After it, w is told
// nothing more.
func (a *attempt) unwatch(w *phaseWatch) {
	if w != nil {
		a.watches = slices.DeleteFunc(a.watches, func(x *phaseWatch) bool { return x == w })
	}
}

// invalidate records that a daemon went down: a ready machine goes back to
// not started, so the next Ensure that asks starts what is down; an attempt
// that is running will not leave the machine ready.
func (e *ensurer) invalidate() {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch e.state {
	case stateReady:
		e.transition(stateNotStarted)
	case stateStarting:
		e.current.stale = true
	}
}

// close stops the machine from starting new attempts, forgets that the
// runtime was ready (its owner is stopping it), and waits until the running
// attempt, if any, has ended, or ctx ends.
func (e *ensurer) close(ctx context.Context) error {
	e.mu.Lock()
	e.closed = true
	if e.state == stateReady {
		e.transition(stateNotStarted)
	}
	a := e.current
	e.mu.Unlock()
	if a == nil {
		return nil
	}
	select {
	case <-a.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the runtime start to end: %w", ctx.Err())
	}
}

func reused(ready EnsureResult) EnsureResult {
	return EnsureResult{Ready: true, Endpoint: ready.Endpoint, Message: ready.Message, Status: StatusReused}
}
