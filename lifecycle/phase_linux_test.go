package lifecycle

import (
	"context"
	"slices"
	"testing"
)

// TestStartTellsItsPhases: a cold start with the fake daemons tells
// Config.OnPhase and the caller's watch the same phases, in the order
// they end, the ensure last with the start's status; an Ensure of the
// ready runtime starts nothing and tells nothing.
func TestStartTellsItsPhases(t *testing.T) {
	f := newFakes(t)
	var published, watched phaseLog
	r, _ := fakeRuntime(t, f, func(c *Config) {
		c.Volume = &fakeVolume{}
		c.OnPhase = published.add
	})
	res := r.Ensure(WithPhaseWatch(context.Background(), watched.add), true)
	if res.Status != StatusStarted {
		t.Fatalf("cold Ensure: %+v", res)
	}
	want := []string{PhaseDataVolume, PhaseContainerdReady, PhaseDockerdReady, PhaseEnsure}
	if got := published.names(); !slices.Equal(got, want) {
		t.Errorf("OnPhase was told %v, want %v", got, want)
	}
	if got := watched.names(); !slices.Equal(got, want) {
		t.Errorf("the watch was told %v, want %v", got, want)
	}
	for i, p := range watched.phases {
		if p.Took < 0 || (p.Status != "") != (p.Name == PhaseEnsure) {
			t.Errorf("phase %d: %+v; want a time, and a status only on the ensure", i, p)
		}
	}
	if last := watched.phases[len(watched.phases)-1]; last.Status != StatusStarted {
		t.Errorf("the ensure phase: %+v, want started", last)
	}

	if res := r.Ensure(WithPhaseWatch(context.Background(), watched.add), true); res.Status != StatusReused {
		t.Fatalf("second Ensure: %+v", res)
	}
	if got := published.names(); len(got) != len(want) {
		t.Errorf("an Ensure of a ready runtime told OnPhase more: %v", got)
	}
	if got := watched.names(); len(got) != len(want) {
		t.Errorf("an Ensure of a ready runtime told its watch more: %v", got)
	}
}
