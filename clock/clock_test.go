package clock

import (
	"errors"
	"testing"
	"time"
)

type fakeClock struct {
	now  time.Time
	sets []time.Time
	err  error
}

func (f *fakeClock) Now() time.Time { return f.now }

func (f *fakeClock) Set(t time.Time) error {
	if f.err != nil {
		return f.err
	}
	f.sets = append(f.sets, t)
	f.now = t
	return nil
}

func TestSync(t *testing.T) {
	host := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		guest     time.Time
		threshold time.Duration
		setErr    error
		wantDrift time.Duration
		wantStep  bool
	}{
		{"in step", host, WholeSecondThreshold, nil, 0, false},
		{"within whole-second threshold", host.Add(900 * time.Millisecond), WholeSecondThreshold, nil, 900 * time.Millisecond, false},
		{"past whole-second threshold", host.Add(-3 * time.Second), WholeSecondThreshold, nil, -3 * time.Second, true},
		{"within precise threshold", host.Add(-40 * time.Millisecond), PreciseThreshold, nil, -40 * time.Millisecond, false},
		{"past precise threshold", host.Add(60 * time.Millisecond), PreciseThreshold, nil, 60 * time.Millisecond, true},
		{"years behind", time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), WholeSecondThreshold, nil, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).Sub(host), true},
		{"setter fails", host.Add(time.Hour), WholeSecondThreshold, errors.New("EPERM"), time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := &fakeClock{now: tt.guest, err: tt.setErr}
			r := NewSyncer(fc.Now, fc.Set).Sync(host, tt.threshold)
			if r.Drift != tt.wantDrift {
				t.Errorf("drift = %v, want %v", r.Drift, tt.wantDrift)
			}
			if r.Stepped != tt.wantStep {
				t.Errorf("stepped = %v, want %v", r.Stepped, tt.wantStep)
			}
			if (r.Err != nil) != (tt.setErr != nil) {
				t.Errorf("err = %v, want %v", r.Err, tt.setErr)
			}
			if tt.wantStep && (len(fc.sets) != 1 || !fc.sets[0].Equal(host)) {
				t.Errorf("clock set to %v, want once to %v", fc.sets, host)
			}
			if !tt.wantStep && len(fc.sets) != 0 {
				t.Errorf("clock set to %v, want untouched", fc.sets)
			}
		})
	}
}

func TestSyncDisabledNeverSteps(t *testing.T) {
	host := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	r := NewSyncer(func() time.Time { return host.Add(time.Hour) }, nil).Sync(host, PreciseThreshold)
	if r.Stepped || r.Err != nil || r.Drift != time.Hour {
		t.Fatalf("got %+v, want drift 1h and no step", r)
	}
}
