// Package startup records how long the agent took to come up, phase by
// phase, as Prometheus metrics: when the process started, and for each phase
// (configuration, each listener bound, the runtime's steps) how long it took
// and how far from the process start it finished.
package startup

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Phases is the startup-phase metric family. Build one in main with New and
// pass it to whatever has a phase to report. It is safe for concurrent use.
type Phases struct {
	start    time.Time
	duration *prometheus.GaugeVec
	end      *prometheus.GaugeVec

	mu   sync.Mutex
	seen map[string]time.Duration
}

// New registers the family on reg. start is when the process started (see
// ProcessStart); offsets are measured from it on the monotonic clock.
func New(reg prometheus.Registerer, start time.Time) *Phases {
	p := &Phases{
		start: start,
		duration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "arcbox_agent",
			Name:      "startup_phase_duration_seconds",
			Help:      "How long each startup phase took, in seconds.",
		}, []string{"phase"}),
		end: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "arcbox_agent",
			Name:      "startup_phase_end_seconds",
			Help:      "Seconds from process start to the end of each startup phase.",
		}, []string{"phase"}),
		seen: map[string]time.Duration{},
	}
	startGauge := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "arcbox_agent",
		Name:      "start_time_seconds",
		Help:      "When the agent process started, in seconds since the Unix epoch.",
	})
	startGauge.Set(float64(start.UnixNano()) / 1e9)
	reg.MustRegister(p.duration, p.end, startGauge)
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
	p.duration.WithLabelValues(phase).Set(took.Seconds())
	p.end.WithLabelValues(phase).Set(endOffset.Seconds())
	p.mu.Lock()
	p.seen[phase] = endOffset
	p.mu.Unlock()
}

// End returns how long after the process start phase ended, if it has.
func (p *Phases) End(phase string) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.seen[phase]
	return d, ok
}
