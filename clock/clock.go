// Package clock keeps the guest's realtime clock close to the host's: it
// measures the drift against a time the host sends, and steps the clock only
// when the drift is past a threshold, so frequent pings do not jitter it.
package clock

import (
	"sync"
	"time"
)

// The thresholds past which the clock is stepped: a host time in whole
// seconds cannot say more than that; one in nanoseconds can.
const (
	WholeSecondThreshold = time.Second
	PreciseThreshold     = 50 * time.Millisecond
)

// Setter sets the realtime clock. SetRealtime is the real one; tests inject
// a fake and never touch the machine's clock.
type Setter func(time.Time) error

// Syncer compares the guest clock with host times and steps it.
type Syncer struct {
	now func() time.Time
	set Setter // nil: never step

	mu sync.Mutex // one step at a time
}

// NewSyncer returns a Syncer reading now and stepping with set; a nil set
// turns stepping off (the agent's --set-clock=false).
func NewSyncer(now func() time.Time, set Setter) *Syncer {
	return &Syncer{now: now, set: set}
}

// Result is what a sync found and did.
type Result struct {
	Drift   time.Duration // guest minus host, before any step
	Stepped bool
	Err     error // why the clock could not be stepped
}

// Sync compares the guest clock with host and steps it to the host's time
// when they are more than threshold apart.
func (s *Syncer) Sync(host time.Time, threshold time.Duration) Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	guest := s.now()
	drift := guest.Sub(host)
	r := Result{Drift: drift}
	if s.set == nil || drift.Abs() <= threshold {
		return r
	}
	// Carry the host's time forward by what passed since it was compared.
	target := host.Add(s.now().Sub(guest))
	if err := s.set(target); err != nil {
		r.Err = err
		return r
	}
	r.Stepped = true
	return r
}
