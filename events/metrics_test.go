package events

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

func TestMetrics(t *testing.T) {
	promtool := testenv.RequireBinary(t, "promtool")
	reg := prometheus.NewPedanticRegistry()
	j := openJournal(t, Config{Size: 4, Registerer: reg})

	names := []string{
		"arcbox_agent_event_journal_appends_total", "arcbox_agent_event_journal_write_errors_total",
		"arcbox_agent_event_subscribers", "arcbox_agent_event_subscribers_fell_behind_total",
		"arcbox_agent_event_journal_last_seq", "arcbox_agent_event_journal_oldest_seq",
	}
	if n, err := testutil.GatherAndCount(reg, names...); err != nil || n != len(names) {
		t.Fatalf("at Open %d of the %d series exist (%v)", n, len(names), err)
	}

	s, err := j.Subscribe(Live(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(j, 6) // the subscriber falls behind
	var fb *FellBehindError
	if _, _, err := s.Next(context.Background()); !errors.As(err, &fb) {
		t.Fatalf("Next: %v, want FellBehindError", err)
	}
	for m, want := range map[prometheus.Collector]float64{
		j.metrics.appends: 6, j.metrics.subscribers: 1, j.metrics.fellBehind: 1,
		j.metrics.lastSeq: 6, j.metrics.oldestSeq: 3, j.metrics.writeErrors: 0,
	} {
		if got := testutil.ToFloat64(m); got != want {
			t.Errorf("%v = %v, want %v", m, got, want)
		}
	}
	s.Close()
	s.Close()
	if got := testutil.ToFloat64(j.metrics.subscribers); got != 0 {
		t.Errorf("subscribers after Close = %v, want 0", got)
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = &text
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n%s", err, out, text.String())
	}

	if _, err := Open(Config{Registerer: reg}); err == nil {
		t.Error("a second journal on the same registry opened without an error")
	}
}
