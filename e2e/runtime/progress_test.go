package runtime

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

// TestEnsureProgress: a cold ensure asked as NDJSON, through the SDK,
// hands over the start's phases as they end (the data volume, containerd
// ready, dockerd ready, then the whole ensure) and only then the answer;
// a subscriber to the events sees the same phases as runtime.phase
// events. Every line and event is checked against the contract.
func TestEnsureProgress(t *testing.T) {
	e := setup(t)
	a := e.agent
	a.start(t)
	sdk := a.SDK(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // bounds a hang only
	defer cancel()

	phase := api.EventActionRuntimePhase
	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	subscribed := make(chan struct{})
	evs := make(chan api.Event, 64)
	go func() {
		defer close(evs)
		for ev, err := range sdk.Events(evCtx, client.EventsOptions{Action: phase, OnConnect: func() { close(subscribed) }}) {
			if err != nil {
				return
			}
			evs <- ev
		}
	}()
	select {
	case <-subscribed:
	case <-ctx.Done():
		t.Fatal("GET /v1/events: no answer")
	}

	type line struct {
		phase, status string
		took          int64
	}
	var lines []line
	res, err := sdk.EnsureRuntime(ctx, api.RuntimeEnsureRequest{}, func(p api.RuntimeEnsureProgress) {
		l := line{phase: string(*p.Phase), took: *p.TookMs}
		if p.Status != nil {
			l.status = string(*p.Status)
		}
		lines = append(lines, l)
	})
	if err != nil {
		t.Fatalf("streamed ensure: %v\n%s", err, a.logTail())
	}
	if res.Status != api.RuntimeEnsureResponseStatusStarted || !res.Ready {
		t.Fatalf("streamed ensure answered %+v, want started and ready", res)
	}
	var names []string
	for _, l := range lines {
		names = append(names, l.phase)
		if l.took < 0 {
			t.Errorf("phase %s took %d ms", l.phase, l.took)
		}
	}
	t.Logf("phases before the answer: %+v", lines)
	want := []string{"data_volume", "containerd_ready", "dockerd_ready", "ensure"}
	if !slices.Equal(names, want) {
		t.Fatalf("the phase lines before the answer: %v, want %v", names, want)
	}
	if last := lines[len(lines)-1]; last.status != "started" {
		t.Errorf("the ensure line: %+v, want status started", last)
	}

	seen := map[string]map[string]string{}
	var order []string
	for len(order) < len(want) {
		select {
		case ev, ok := <-evs:
			if !ok {
				t.Fatalf("the event stream ended after %v", order)
			}
			at := *ev.Attributes
			if ev.SandboxId != "" {
				t.Errorf("a runtime.phase event about sandbox %q", ev.SandboxId)
			}
			if _, err := strconv.ParseInt(at["took_ms"], 10, 64); err != nil {
				t.Errorf("event %+v: took_ms %q is not a number", ev, at["took_ms"])
			}
			order = append(order, at["phase"])
			seen[at["phase"]] = at
		case <-ctx.Done():
			t.Fatalf("runtime.phase events: only %v", order)
		}
	}
	if !slices.Equal(order, want) {
		t.Errorf("runtime.phase events: %v, want %v", order, want)
	}
	if st := seen["ensure"]["status"]; st != "started" {
		t.Errorf("the ensure event's status %q, want started", st)
	}

	// A ready runtime has no phase to tell: the answer alone.
	lines = nil
	if res, err := sdk.EnsureRuntime(ctx, api.RuntimeEnsureRequest{}, func(p api.RuntimeEnsureProgress) {
		lines = append(lines, line{phase: string(*p.Phase)})
	}); err != nil || res.Status != api.RuntimeEnsureResponseStatusReused || len(lines) != 0 {
		t.Errorf("a streamed ensure of the ready runtime: %+v, %v, phases %v; want reused alone", res, err, lines)
	}
	stopEvents()
	if _, err := a.terminate(t, 2*time.Minute); err != nil {
		t.Errorf("the agent's exit: %v", err)
	}
}
