package lifecycle

import (
	"context"
	"time"
)

// The phases of a runtime start, in the order they end. A start goes
// through those it needs (prerequisites only with Config.PrepareSystem, the
// data volume only with Config.Volume, a daemon's only when it was started
// or waited for), and always ends with PhaseEnsure. They are also the
// names of the runtime's phase metrics.
const (
	PhasePrerequisites   = "prerequisites"
	PhaseDataVolume      = "data_volume"
	PhaseContainerdReady = "containerd_ready"
	PhaseDockerdReady    = "dockerd_ready"
	PhaseEnsure          = "ensure"
)

// Phase is a phase of a runtime start that has ended.
type Phase struct {
	// Name is one of the Phase* names.
	Name string
	// Took is how long it took: for a daemon, from its spawn (or, waited
	// for, from when the Runtime first knew of it) to its socket
	// answering; for PhaseEnsure, the whole start.
	Took time.Duration
	// Status is the start's outcome on PhaseEnsure (StatusStarted,
	// StatusReused or StatusFailed), empty on the others. It is the
	// start's, not a caller's: a caller that joined a start another
	// caller drove is answered StatusReused.
	Status string
}

type phaseWatchKey struct{}

// WithPhaseWatch returns a copy of ctx that makes Ensure tell watch the
// phases of the start the call waits for: those that ended before the
// call joined it, then each as it ends, until Ensure returns. A call that
// waits for no start (the runtime is ready, or only probed) tells it
// nothing. watch is called with the Runtime's lock held, from the start's
// goroutine or the caller's: it must return at once (hand the phase to a
// buffered channel, say), and never call the Runtime. The watch travels
// in ctx, as net/http/httptrace's hooks do, because it belongs to one
// call and every layer between the caller and the Runtime passes ctx on.
func WithPhaseWatch(ctx context.Context, watch func(Phase)) context.Context {
	return context.WithValue(ctx, phaseWatchKey{}, watch)
}

// PhaseWatch returns the watch WithPhaseWatch set on ctx, or nil, for a
// runtime other than Runtime (a fake) to honour it.
func PhaseWatch(ctx context.Context) func(Phase) {
	w, _ := ctx.Value(phaseWatchKey{}).(func(Phase))
	return w
}

// endPhase records that phase name, begun at began, has ended: in the
// phase metrics, and as a Phase for Config.OnPhase and report (the
// attempt's watchers).
func (r *Runtime) endPhase(report func(Phase), name string, began time.Time) {
	r.observe(name, began)
	r.tell(report, Phase{Name: name, Took: time.Since(began)})
}

// tell hands p to Config.OnPhase, then to the attempt's watchers.
func (r *Runtime) tell(report func(Phase), p Phase) {
	if r.cfg.OnPhase != nil {
		r.cfg.OnPhase(p)
	}
	report(p)
}

// observe records a runtime phase when Phases is set.
func (r *Runtime) observe(phase string, began time.Time) {
	if r.cfg.Phases != nil {
		r.cfg.Phases.Observe(phase, began)
	}
}
