package events

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the journal's series. They always exist, so the journal
// never checks for nil; they are registered only when a Registerer is given.
type metrics struct {
	appends     prometheus.Counter
	writeErrors prometheus.Counter
	fellBehind  prometheus.Counter
	subscribers prometheus.Gauge
	lastSeq     prometheus.Gauge
	oldestSeq   prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		appends: counter("arcbox_agent_event_journal_appends_total",
			"Events appended to the event journal."),
		writeErrors: counter("arcbox_agent_event_journal_write_errors_total",
			"Failed writes of the event journal's files (events are still served from memory)."),
		fellBehind: counter("arcbox_agent_event_subscribers_fell_behind_total",
			"Event subscriptions ended because they fell more than the journal's size behind."),
		subscribers: gauge("arcbox_agent_event_subscribers",
			"Open event subscriptions."),
		lastSeq: gauge("arcbox_agent_event_journal_last_seq",
			"The newest seq the event journal assigned (or may have, after a crash)."),
		oldestSeq: gauge("arcbox_agent_event_journal_oldest_seq",
			"The seq of the oldest event the journal keeps (last seq + 1 when it keeps none)."),
	}
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.appends, m.writeErrors, m.fellBehind, m.subscribers, m.lastSeq, m.oldestSeq} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register the event journal's metrics: %w", err)
		}
	}
	return nil
}
