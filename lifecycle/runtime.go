// Package lifecycle runs the guest's container runtime: it starts containerd
// and dockerd on demand (at most one start at a time, shared by every caller
// that asks meanwhile), adopts the ones an earlier agent left running,
// reports their state, supervises them, serves their logs, and stops them
// when the agent shuts down.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/startup"
)

// Defaults for the zero fields of Config. They are the paths of the seed
// agent and of the API's configuration table.
const (
	DefaultRuntimeBinDir     = "/arcbox/runtime/bin"
	DefaultContainerdSocket  = "/run/containerd/containerd.sock"
	DefaultDockerSocket      = "/var/run/docker.sock"
	DefaultEndpoint          = "vsock:2375"
	DefaultContainerdRoot    = "/var/lib/containerd"
	DefaultContainerdState   = "/run/containerd"
	DefaultContainerdConfig  = "/etc/containerd/config.toml"
	DefaultDockerDataRoot    = "/var/lib/docker"
	DefaultDockerExecRoot    = "/var/run/docker"
	DefaultLogDir            = "/var/log/arcbox"
	DefaultSystemRoot        = "/"
	DefaultContainerdTimeout = 8 * time.Second
	DefaultDockerdTimeout    = 30 * time.Second
	DefaultStopGrace         = 10 * time.Second
	DefaultProbeTimeout      = 300 * time.Millisecond
)

// ntpTimeout bounds the one-shot NTP sync: no answer is only a note.
const ntpTimeout = 10 * time.Second

// Service names, as Status, OpenLog and PID know them.
const (
	Containerd = "containerd"
	Dockerd    = "dockerd"
)

// Service states, as Status reports them.
const (
	ServiceReady    = "ready"
	ServiceNotReady = "not_ready"
	ServiceError    = "error"
)

// DataVolume is the subset of the data volume the runtime needs: it is
// prepared before the daemons start (a failure aborts the start), and its
// state is one of Status's services.
type DataVolume interface {
	// Ensure makes the volume ready (formatted, mounted where
	// Config.DockerDataRoot and Config.ContainerdRoot point) and says what it
	// did. It must be idempotent.
	Ensure(ctx context.Context) (note string, err error)
	// Service reports the volume's state for Status.
	Service() Service
}

// Config configures a Runtime. Zero fields take the documented defaults.
type Config struct {
	// RuntimeBinDir holds dockerd, containerd, containerd-shim-runc-v2 and
	// runc; it is put first on the daemons' PATH. Default DefaultRuntimeBinDir.
	RuntimeBinDir string
	// ContainerdSocket is containerd's gRPC socket (--address). Default
	// DefaultContainerdSocket.
	ContainerdSocket string
	// DockerSocket is dockerd's API socket (--host=unix://). Default
	// DefaultDockerSocket.
	DockerSocket string
	// Endpoint is where the host reaches dockerd, "vsock:<docker port>",
	// reported by Ensure and Status. Default DefaultEndpoint.
	Endpoint string
	// ContainerdRoot is containerd's persistent root (--root). Default
	// DefaultContainerdRoot.
	ContainerdRoot string
	// ContainerdState is containerd's state directory (--state). Default
	// DefaultContainerdState.
	ContainerdState string
	// ContainerdConfig is where the containerd configuration (CRI plugin
	// disabled) is written before containerd starts. Default
	// DefaultContainerdConfig.
	ContainerdConfig string
	// DockerDataRoot is dockerd's --data-root. Default DefaultDockerDataRoot.
	DockerDataRoot string
	// DockerExecRoot is dockerd's --exec-root; its pid file is written
	// there too. Default DefaultDockerExecRoot.
	DockerExecRoot string
	// ExtraDockerdArgs are appended to dockerd's flags (--storage-driver=vfs
	// where overlay2 does not work, say). Default none.
	ExtraDockerdArgs []string
	// LogDir receives containerd.log and dockerd.log, the daemons' output.
	// Default DefaultLogDir (main picks /arcbox/log when /arcbox exists).
	LogDir string

	// PrepareSystem lets a start change the machine first: mount cgroup2,
	// devpts, /dev/shm, /tmp and /run when missing, set ip_forward, load
	// overlay. For an agent that is PID 1. Default false.
	PrepareSystem bool
	// SystemRoot is the root under which the prerequisites find /sys, /dev,
	// /proc, /run, /tmp and /lib/modules (tests use a temporary directory).
	// Default DefaultSystemRoot.
	SystemRoot string
	// NTPServer, when set, is synced with once (busybox ntpd -q -n -p) as
	// part of the prerequisites. Default empty: no sync.
	NTPServer string
	// Volume is the data volume, prepared before the daemons start. Nil:
	// none, the daemons use their roots as they are.
	Volume DataVolume

	// ContainerdTimeout bounds the wait for containerd's socket; when it
	// passes, dockerd is started anyway (it waits for containerd itself).
	// Default DefaultContainerdTimeout.
	ContainerdTimeout time.Duration
	// DockerdTimeout bounds the wait for dockerd's socket. Default
	// DefaultDockerdTimeout.
	DockerdTimeout time.Duration
	// StopGrace is how long Shutdown waits after SIGTERM before SIGKILL.
	// Default DefaultStopGrace.
	StopGrace time.Duration

	// Logger receives the runtime's logs. Default: discarded.
	Logger *slog.Logger
	// Phases, when set, receives the start's phases: prerequisites,
	// data_volume, containerd_ready, dockerd_ready and ensure (the whole
	// start, when it ended ready). Build it with startup.NewRuntime: these
	// are the runtime's phases, not the agent's startup.
	Phases *startup.Phases
	// Registerer, when set, receives the runtime's metrics.
	Registerer prometheus.Registerer
	// OnPhase, when set, is told each phase of every start as it ends,
	// PhaseEnsure last (the agent publishes them as events). It is
	// called from the start's goroutine, which waits for it: it must not
	// wait on anything slow.
	OnPhase func(Phase)

	// StartProcess starts a prepared command, as (*exec.Cmd).Start does
	// (the default). The Runtime waits for it. Tests wrap it to count or
	// replace what is started.
	StartProcess func(cmd *exec.Cmd) error
	// Probe reports whether a daemon (Containerd or Dockerd) answers on
	// its unix socket: nil when it does. Default (probe), bounded by
	// ProbeTimeout: dockerd must answer GET /_ping with 200 (it listens
	// before its API serves, and may still fail in between); containerd's
	// socket must accept a connection.
	Probe func(ctx context.Context, service, path string) error
	// ProbeTimeout bounds each probe of the default Probe, and the look
	// for who serves a socket. Default DefaultProbeTimeout.
	ProbeTimeout time.Duration
}

func (c *Config) setDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.RuntimeBinDir, DefaultRuntimeBinDir)
	def(&c.ContainerdSocket, DefaultContainerdSocket)
	def(&c.DockerSocket, DefaultDockerSocket)
	def(&c.Endpoint, DefaultEndpoint)
	def(&c.ContainerdRoot, DefaultContainerdRoot)
	def(&c.ContainerdState, DefaultContainerdState)
	def(&c.ContainerdConfig, DefaultContainerdConfig)
	def(&c.DockerDataRoot, DefaultDockerDataRoot)
	def(&c.DockerExecRoot, DefaultDockerExecRoot)
	def(&c.LogDir, DefaultLogDir)
	def(&c.SystemRoot, DefaultSystemRoot)
	dur := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	dur(&c.ContainerdTimeout, DefaultContainerdTimeout)
	dur(&c.DockerdTimeout, DefaultDockerdTimeout)
	dur(&c.StopGrace, DefaultStopGrace)
	dur(&c.ProbeTimeout, DefaultProbeTimeout)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.StartProcess == nil {
		c.StartProcess = (*exec.Cmd).Start
	}
	if c.Probe == nil {
		timeout := c.ProbeTimeout
		c.Probe = func(ctx context.Context, service, path string) error {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			return probe(ctx, service, path)
		}
	}
}

// probe is the default Config.Probe, bounded by ctx.
func probe(ctx context.Context, service, path string) error {
	if service == Dockerd {
		return pingDocker(ctx, path)
	}
	return dialSocket(ctx, path)
}

// pingDocker asks dockerd's API for /_ping over its socket.
func pingDocker(ctx context.Context, path string) error {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /_ping on %s: %s", path, resp.Status)
	}
	return nil
}

// dialSocket is a connect, closed at once.
func dialSocket(ctx context.Context, path string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return err
	}
	return c.Close()
}

// Runtime owns containerd and dockerd. Build it with New; it is safe for
// concurrent use.
type Runtime struct {
	cfg Config
	log *slog.Logger
	ens *ensurer

	// lifetime is the context starts run with; Shutdown cancels it.
	lifetime context.Context
	cancel   context.CancelFunc

	ensureTotal *prometheus.CounterVec
	exitsTotal  *prometheus.CounterVec
	// ready is 1 for a service while the Runtime knows it ready (see
	// setReady), else 0.
	ready *prometheus.GaugeVec

	// timer makes the timers of the waits that give up: newTimer, unless
	// a test decides when they fire.
	timer timerFunc
	// ntpTimeout bounds the one-shot NTP sync (ntpTimeout; tests that
	// run a fake ntpd lengthen it to bound only a hang).
	ntpTimeout time.Duration

	mu       sync.Mutex
	children map[string]*child // the latest child of each service
	exits    map[string]int    // how many of each service's children have exited
	closed   bool              // Shutdown began: nothing is spawned any more
}

// waitKind names a wait of the Runtime that gives up after a while.
type waitKind int

const (
	waitReady waitKind = iota // a daemon's socket to answer (the start timeouts)
	waitGrace                 // a daemon to exit after SIGTERM (StopGrace)
)

// timerFunc makes the timer of a service's wait of kind k, due after d:
// the channel fires when the wait gives up; stop releases the timer.
type timerFunc func(service string, k waitKind, d time.Duration) (fire <-chan time.Time, stop func() bool)

// newTimer is the real timerFunc.
func newTimer(_ string, _ waitKind, d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// New builds a Runtime. It starts nothing (Ensure does), but adopts the
// daemons an earlier agent left running, so that Status reports them and
// Shutdown stops them from the first moment.
func New(cfg Config) (*Runtime, error) {
	cfg.setDefaults()
	lifetime, cancel := context.WithCancel(context.Background())
	r := &Runtime{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "lifecycle"),
		ens:        newEnsurer(lifetime),
		lifetime:   lifetime,
		cancel:     cancel,
		timer:      newTimer,
		ntpTimeout: ntpTimeout,
		children:   map[string]*child{},
		exits:      map[string]int{},
		ensureTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "arcbox_agent",
			Name:      "runtime_ensure_total",
			Help:      "Runtime ensure calls, by answer (started, reused, failed).",
		}, []string{"status"}),
		exitsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "arcbox_agent",
			Name:      "runtime_daemon_exits_total",
			Help:      "Unexpected exits of the runtime's daemons, by service.",
		}, []string{"service"}),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "arcbox_agent",
			Name:      "runtime_ready",
			Help:      "1 while the daemon (containerd, dockerd) is known to answer on its socket, else 0.",
		}, []string{"service"}),
	}
	// Every series exists from the start, at zero: a scrape before the
	// first ensure or the first exit sees them.
	for _, status := range []string{StatusStarted, StatusReused, StatusFailed} {
		r.ensureTotal.WithLabelValues(status)
	}
	for _, service := range []string{Containerd, Dockerd} {
		r.exitsTotal.WithLabelValues(service)
		r.ready.WithLabelValues(service)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{r.ensureTotal, r.exitsTotal, r.ready} {
			if err := cfg.Registerer.Register(c); err != nil {
				cancel()
				return nil, fmt.Errorf("lifecycle: register metrics: %w", err)
			}
		}
	}
	r.adoptStrays(lifetime)
	return r, nil
}

// Ensure makes sure dockerd is ready, as the API's runtime ensure does.
// With startIfNeeded it starts what is down, unless a start is already
// running, in which case it waits for that start and shares its outcome;
// without it, it only reports. The answer's Status is StatusStarted for the
// caller that drove a start, StatusReused once ready, StatusFailed with the
// reason otherwise. The start runs detached from ctx: a caller that gives
// up (its ctx ends) gets a failed answer, and the start goes on. A watch
// set on ctx with WithPhaseWatch is told the phases of the start the call
// waits for.
func (r *Runtime) Ensure(ctx context.Context, startIfNeeded bool) EnsureResult {
	res := r.ens.ensure(ctx, startIfNeeded, r.start, r.probe)
	r.ensureTotal.WithLabelValues(res.Status).Inc()
	return res
}

// probe is the seed's do_ensure_runtime_probe.
func (r *Runtime) probe(ctx context.Context) EnsureResult {
	st := r.Status(ctx)
	res := EnsureResult{Ready: st.DockerReady, Endpoint: st.Endpoint, Message: st.Detail, Status: StatusFailed}
	if st.DockerReady {
		res.Status = StatusReused
	}
	return res
}

// PID returns the process id of the service's daemon ("containerd" or
// "dockerd") while the Runtime's child, or the daemon it adopted, runs.
func (r *Runtime) PID(service string) (int, bool) {
	c := r.running(service)
	if c == nil {
		return 0, false
	}
	return c.pid, true
}

// Shutdown stops the runtime: no start begins any more, a running start is
// abandoned, then dockerd and containerd, in that order, get SIGTERM and,
// if still alive after Config.StopGrace (or when ctx ends), SIGKILL. Only
// the processes the Runtime started or adopted are signalled.
func (r *Runtime) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	var errs []error
	if err := r.ens.close(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, name := range []string{Dockerd, Containerd} {
		r.mu.Lock()
		c := r.children[name]
		r.mu.Unlock()
		if c == nil {
			continue
		}
		grace, stop := r.timer(name, waitGrace, r.cfg.StopGrace)
		if err := c.stop(ctx, grace); err != nil {
			errs = append(errs, err)
		}
		stop()
	}
	return errors.Join(errs...)
}
