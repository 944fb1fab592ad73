package sandbox

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the manager's Prometheus collectors.
type metrics struct {
	sandboxes     *prometheus.GaugeVec
	createToReady prometheus.Histogram
	runSeconds    prometheus.Histogram
	// checkpointSeconds and restoreSeconds time checkpoints, and restores
	// to ready.
	checkpointSeconds prometheus.Histogram
	restoreSeconds    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sandboxes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "arcbox_agent_sandboxes",
			Help: "Sandboxes, by state.",
		}, []string{"state"}),
		createToReady: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "arcbox_agent_sandbox_create_to_ready_seconds",
			Help:    "Time from a sandbox's create request to its ready state.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		runSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "arcbox_agent_sandbox_run_seconds",
			Help:    "Duration of workloads run in sandboxes, from start to exit.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
		}),
		checkpointSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "arcbox_agent_sandbox_checkpoint_seconds",
			Help:    "Time to checkpoint a sandbox's files.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		restoreSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "arcbox_agent_sandbox_restore_to_ready_seconds",
			Help:    "Time from a restore request to the restored sandbox's ready state.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
	}
	for _, s := range States {
		m.sandboxes.WithLabelValues(string(s)).Set(0)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.sandboxes, err = register(reg, m.sandboxes)
	if err != nil {
		return nil, err
	}
	if m.createToReady, err = register(reg, m.createToReady); err != nil {
		return nil, err
	}
	if m.runSeconds, err = register(reg, m.runSeconds); err != nil {
		return nil, err
	}
	if m.checkpointSeconds, err = register(reg, m.checkpointSeconds); err != nil {
		return nil, err
	}
	if m.restoreSeconds, err = register(reg, m.restoreSeconds); err != nil {
		return nil, err
	}
	return m, nil
}

// register adds c to reg, or returns the collector already registered
// under its name (a second manager on the same registry shares it).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("register sandbox metrics: %w", err)
	}
	return c, nil
}

// move counts a sandbox leaving one state for another; "" is none.
func (m *metrics) move(from, to State) {
	if from != "" {
		m.sandboxes.WithLabelValues(string(from)).Dec()
	}
	if to != "" {
		m.sandboxes.WithLabelValues(string(to)).Inc()
	}
}
