// Package startup records how long the agent and its runtime took to come
// up, phase by phase, as Prometheus metrics: when the process started, and
// for each phase how long it took and how far from the process start it
// finished. The agent's own phases (configuration, init, each kind of
// listener bound) and the runtime's (prerequisites, data volume, each
// daemon ready) are two families, so a runtime started long after boot,
// or again, does not blur the agent's startup.
package startup

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Phases is one phase metric family. Build the agent's with New and the
// runtime's with NewRuntime, in main, and pass them to whatever has a phase
// to report. Phase names are fixed words ("config", "listen_control_tcp"),
// never addresses or ids. It is safe for concurrent use.
type Phases struct {
	start    time.Time
	duration *prometheus.GaugeVec
	end      *prometheus.GaugeVec

	mu   sync.Mutex
	seen map[string]time.Duration
}

// New registers the agent's startup family on reg: the phases
// arcbox_agent_startup_phase_duration_seconds and
// arcbox_agent_startup_phase_end_seconds, and
// arcbox_agent_start_time_seconds. start is when the process started (see
// ProcessStart); offsets are measured from it on the monotonic clock.
func New(reg prometheus.Registerer, start time.Time) *Phases {
	p := newFamily(reg, start, "startup", "startup phase")
	startGauge := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "arcbox_agent",
		Name:      "start_time_seconds",
		Help:      "When the agent process started, in seconds since the Unix epoch.",
	})
	startGauge.Set(float64(start.UnixNano()) / 1e9)
	reg.MustRegister(startGauge)
	return p
}

// NewRuntime registers the runtime's family on reg:
// arcbox_agent_runtime_phase_duration_seconds and
// arcbox_agent_runtime_phase_end_seconds, the steps of a runtime start.
// start is the process start, as for New, so the runtime's phases line up
// with the agent's.
func NewRuntime(reg prometheus.Registerer, start time.Time) *Phases {
	return newFamily(reg, start, "runtime", "runtime start phase")
}

func newFamily(reg prometheus.Registerer, start time.Time, subsystem, what string) *Phases {
	p := &Phases{
		start: start,
		duration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "arcbox_agent",
			Subsystem: subsystem,
			Name:      "phase_duration_seconds",
			Help:      "How long each " + what + " took, in seconds; the latest when it ran again.",
		}, []string{"phase"}),
		end: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "arcbox_agent",
			Subsystem: subsystem,
			Name:      "phase_end_seconds",
			Help:      "Seconds from process start to the end of each " + what + "; the latest when it ran again.",
		}, []string{"phase"}),
		seen: map[string]time.Duration{},
	}
	reg.MustRegister(p.duration, p.end)
	return p
}

// Start returns when the process started.
func (p *Phases) Start() time.Time { return p.start }

// Observe records that phase began at began and ended now. A phase observed
// again (a runtime restarted by a later ensure, say) keeps its latest figures.
func (p *Phases) Observe(phase string, began time.Time) {
	now := time.Now()
	p.Record(phase, now.Sub(began), now.Sub(p.start))
}

// Record records a phase's duration and its end as an offset from the start.
func (p *Phases) Record(phase string, took, endOffset time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.duration.WithLabelValues(phase).Set(took.Seconds())
	p.end.WithLabelValues(phase).Set(endOffset.Seconds())
	p.seen[phase] = endOffset
}

// End returns how long after the process start phase ended, if it has.
func (p *Phases) End(phase string) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.seen[phase]
	return d, ok
}
