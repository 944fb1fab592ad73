// Command arcbox-agent is the agent inside an arcbox VM: the host's only way
// in. It serves the control API (openapi.yaml) on vsock, unix and TCP
// listeners and, when it is the VM's init, does init's duties too.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	arcboxagent "github.com/arcbox/arcbox-agent"
	"github.com/arcbox/arcbox-agent/clock"
	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/dockerproxy"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/kmod"
	"github.com/arcbox/arcbox-agent/lifecycle"
	"github.com/arcbox/arcbox-agent/netconf"
	"github.com/arcbox/arcbox-agent/pid1"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/shares"
	"github.com/arcbox/arcbox-agent/startup"
	"github.com/arcbox/arcbox-agent/sysinfo"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

// initDone is when the Go runtime and every package had been initialised:
// package main's variables are the last initialised before main runs.
// The go_init startup phase ends here; the agent's own code cannot
// shorten what comes before it.
var initDone = time.Now()

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sandbox-init" {
		sandbox.InitMain() // a sandbox's process 1; never returns
	}
	isInit := pid1.IsInit()
	if isInit && os.Getenv("PATH") == "" {
		// The kernel starts init with almost no environment.
		_ = os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		err := runProbe(os.Args[2:], os.Stdout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "arcbox-agent: %v\n", err)
		}
		os.Exit(probeExitStatus(err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	trimWhenIdle(ctx, os.Getenv)
	action, err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, errHelp):
		err = nil
	case errors.Is(err, errVersion):
		fmt.Fprintf(os.Stdout, "arcbox-agent %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		err = nil
	case err != nil:
		fmt.Fprintf(os.Stderr, "arcbox-agent: %v\n", err)
	}
	if isInit {
		// An init that exits panics the kernel: power off (or reboot, when
		// that was asked) instead.
		halt := pid1.PowerOff
		if action == actionReboot {
			halt = pid1.Reboot
		}
		if perr := halt(); perr != nil {
			fmt.Fprintf(os.Stderr, "arcbox-agent: %s: %v\n", action, perr)
		}
		select {}
	}
	if err != nil {
		os.Exit(1)
	}
}

// run is the agent: it returns when ctx ends (SIGTERM or SIGINT) or a
// shutdown is asked for through the API, once the shutdown is done or its
// grace has passed, with what should become of the machine: actionPowerOff
// or actionReboot.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) (string, error) {
	a, err := start(ctx, args, getenv, stdout, stderr)
	if err != nil {
		return actionPowerOff, err
	}
	defer a.release()
	if err := a.serve(); err != nil {
		a.abort()
		return actionPowerOff, err
	}
	order := a.haltOrder()
	a.shutdown(order)
	return order.action, nil
}

// agent is the running agent: what start builds, serve puts on the
// listeners and shutdown stops.
type agent struct {
	cfg    *config
	logger *slog.Logger
	began  time.Time // when the process started
	token  string    // the bearer token of TCP listeners; "" for none

	// ctx ends with run's (SIGTERM or SIGINT), or when run returns.
	ctx    context.Context
	cancel context.CancelFunc

	// stopping ends as the server begins to shut down, and with it the
	// streaming responses.
	stopping      context.Context
	beginStopping context.CancelFunc
	// proxyCtx ends the Docker proxy's connections.
	proxyCtx  context.Context
	stopProxy context.CancelFunc

	isInit bool

	// halting is the shutdown under way: the API's order, or a signal's
	// once serve has returned; nil before either.
	haltMu  sync.Mutex
	halting *haltOrder

	listeners      *httpapi.Listeners
	held           heldListeners // the control listeners until serve
	server         *http.Server
	proxy          *dockerproxy.Proxy
	proxyDone      sync.WaitGroup
	sandboxManager *pendingManager
	volume         *disk.Volume
	mounter        *shares.Mounter // nil when no share is configured
	shares         []shares.Share  // the shares mounted at startup
	runtime        *lifecycle.Runtime
	closeAudit     func()
}

// start reads the configuration, does init's duties when the agent is
// PID 1, binds the control API's listeners, prepares the machine and
// builds each part of the agent. What a bind needs comes before it (the
// configuration and its checks, init's mounts, the kernel modules and
// the network); the rest after, as a host that connects meanwhile only
// waits: its connection is queued, and its requests are answered once
// serve hands the listeners to the server. The sandbox manager starts
// in serve, in the background.
func start(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) (*agent, error) {
	began := startup.ProcessStart()
	// As init, mount /proc and friends first: the configuration reads the
	// kernel command line from /proc.
	isInit := pid1.IsInit()
	var mountErr error
	var mountsTook time.Duration
	if isInit {
		mountsBegan := time.Now()
		mountErr = pid1.System.MountMissing(slog.New(slog.DiscardHandler), pid1.EssentialMounts)
		mountsTook = time.Since(mountsBegan)
	}
	configBegan := time.Now()
	cfg, logger, err := configure(args, getenv, stdout, stderr)
	if err != nil {
		return nil, err
	}
	setMaxProcs(cfg.MaxProcs, getenv)
	token, err := listenerAuth(cfg, func(listener string) {
		logger.Warn("serving a TCP listener without authentication (--insecure-loopback): any local user can reach it", "listener", listener)
	})
	if err != nil {
		return nil, err
	}
	auditLog, closeAudit, err := openAuditLog(cfg, logger)
	if err != nil {
		return nil, err
	}

	reg := prometheus.NewRegistry()
	phases := startup.New(reg, began)
	goInit := max(initDone.Sub(began), 0) // 0 when the process start could not be read
	phases.Record("go_init", goInit, goInit)
	phases.Observe("config", configBegan)

	a := &agent{cfg: cfg, logger: logger, began: began, token: token, closeAudit: closeAudit, isInit: isInit}
	a.ctx, a.cancel = context.WithCancel(ctx)
	a.stopping, a.beginStopping = context.WithCancel(context.Background())
	a.proxyCtx, a.stopProxy = context.WithCancel(context.Background())
	startProcess := (*exec.Cmd).Start
	if isInit {
		if mountErr != nil {
			logger.Error("mount the essential filesystems", "err", mountErr)
		}
		reaper := pid1.NewReaper(logger.With("component", "reaper"))
		go reaper.Run(a.ctx)
		startProcess = reaper.Start // so the reaper never takes a daemon's exit
		phases.Record("init", mountsTook, configBegan.Sub(began))
	}
	a.prepareListening(isInit, phases)
	if err := a.bindControl(reg, phases); err != nil {
		a.release()
		return nil, err
	}
	// Bound: the rest is what a request needs, not the bind.
	registerProcessMetrics(reg)
	a.mountShares(phases) // after the modules: virtiofs may be one
	if err := a.build(reg, phases, startProcess, auditLog); err != nil {
		a.abort()
		a.release()
		return nil, err
	}
	return a, nil
}

// configure resolves the configuration and makes the logger, which then
// tells of the bad settings that were ignored.
func configure(args []string, getenv func(string) string, stdout, stderr io.Writer) (*config, *slog.Logger, error) {
	var warnings [][]any
	cfg, err := loadConfig(args, getenv, stdout, func(msg string, kv ...any) {
		warnings = append(warnings, append([]any{msg}, kv...))
	})
	if err != nil {
		return nil, nil, err
	}
	logger := newLogger(cfg, stderr)
	for _, w := range warnings {
		logger.Warn(w[0].(string), w[1:]...)
	}
	return cfg, logger, nil
}

// prepareListening loads the kernel modules and sets the static
// addresses asked for (as init it always configures the network, which
// brings loopback up): a listener may need either (the vsock transport
// may be a module; a TCP listener's address must be up). A failure is
// logged, and the agent serves on.
func (a *agent) prepareListening(isInit bool, phases *startup.Phases) {
	if len(a.cfg.Modules) > 0 {
		modulesBegan := time.Now()
		if err := loadModules(a.logger, a.cfg.Modules); err != nil {
			a.logger.Error("load kernel modules", "err", err)
		}
		phases.Observe("modules", modulesBegan)
	}
	if isInit || len(a.cfg.NetAddresses) > 0 {
		netBegan := time.Now()
		netCtx, cancelNet := context.WithTimeout(a.ctx, 5*time.Second)
		if err := netconf.System.Configure(netCtx, a.cfg.NetAddresses); err != nil {
			a.logger.Error("configure the network", "err", err)
		} else if len(a.cfg.NetAddresses) > 0 {
			a.logger.Info("configured the network", "addresses", a.cfg.NetAddresses)
		}
		cancelNet()
		phases.Observe("network", netBegan)
	}
}

// bindControl binds the control API's listeners and holds them (see
// heldListeners) until serve hands them to the server. A listener that
// cannot bind fails the start, and those bound before it are closed.
func (a *agent) bindControl(reg prometheus.Registerer, phases *startup.Phases) error {
	a.listeners = httpapi.NewListeners(httpapi.ListenersConfig{
		Logger:       a.logger.With("component", "listeners"),
		Phases:       phases,
		Registerer:   reg,
		AllowCIDs:    a.cfg.AllowCIDs,
		SocketGID:    a.cfg.SocketGID,
		HasSocketGID: a.cfg.HasSocketGID,
	})
	for _, u := range a.cfg.Listen {
		ep, err := httpapi.ParseEndpoint(u)
		if err != nil {
			return err
		}
		if err := a.listeners.Bind(a.ctx, "control", ep, a.held.hold(a.serveAPI(ep))); err != nil {
			return fmt.Errorf("listen on %s: %w", u, err)
		}
	}
	return nil
}

// build makes the parts of the agent: the data volume, the container
// runtime, the sandbox manager (starting in the background),
// the Docker proxy and the HTTP server of the control API.
func (a *agent) build(reg *prometheus.Registry, phases *startup.Phases, startProcess func(*exec.Cmd) error, auditLog *slog.Logger) error {
	cfg, logger := a.cfg, a.logger
	var setClock clock.Setter
	if cfg.SetClock {
		setClock = clock.SetRealtime
	}
	var err error
	if a.volume, err = newVolume(cfg, logger); err != nil {
		return err
	}
	var prepareState func(context.Context) error
	if cfg.StateOnDataVolume {
		prepareState = a.prepareStateDir
	}
	a.sandboxManager = newSandboxes(a.ctx, cfg, logger, phases, reg, prepareState)
	// The runtime's phases are a family of their own (a start may come
	// long after the agent's startup, and again), and events too, in the
	// journal the sandbox manager opens in the background.
	if a.runtime, err = newRuntime(cfg, a.volume, logger, startup.NewRuntime(reg, phases.Start()), reg, startProcess,
		a.sandboxManager.publishRuntimePhase); err != nil {
		return err
	}
	a.proxy, err = dockerproxy.New(dockerproxy.Config{Socket: cfg.DockerSocket, Logger: logger, Registerer: reg, Token: a.token})
	if err != nil {
		return err
	}
	api := handlers.New(handlers.Config{
		Version:         version,
		Logger:          logger,
		Clock:           clock.NewSyncer(time.Now, setClock),
		SystemInfo:      sysinfo.Source{}.Collect,
		GuestStats:      sysinfo.StatsSource{DataMount: cfg.DataMount}.Collect,
		Listeners:       a.listeners.Status,
		Metrics:         promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Spec:            arcboxagent.OpenAPI,
		Runtime:         a.runtime,
		SandboxManager:  a.sandboxManager.wait,
		Events:          a.sandboxManager.events,
		FileUploadLimit: cfg.FileUploadLimit,
		Stopping:        a.stopping,
		Shares:          a.mountedShares,
		Shutdown:        a.requestShutdown,
		// A shutdown through the API has the time a signal's has.
		DefaultShutdownGrace: cfg.ShutdownTimeout + runtimeStopTimeout,
	})
	a.server = &http.Server{
		Handler: httpapi.NewRouter(httpapi.RouterConfig{API: api, Logger: logger, Registerer: reg,
			Token: a.token, Audit: auditLog, StreamedBody: handlers.StreamedBody}),
		// Each request learns who is calling (for the token check and the
		// audit log) from its connection's listener.
		ConnContext:       httpapi.ConnContext,
		ReadHeaderTimeout: httpapi.ReadHeaderTimeout,
		IdleTimeout:       httpapi.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(logger.With("component", "http").Handler(), slog.LevelWarn),
	}
	a.server.RegisterOnShutdown(a.beginStopping)
	return nil
}

// serve binds the Docker proxy's listener, serving on it as soon as it is
// bound, hands the control API's listeners to the server, then starts
// the sandbox manager, and returns when ctx ends. The Docker listener is
// bound first so that /readyz, from its first answer, counts it.
func (a *agent) serve() error {
	cfg := a.cfg
	dockerEP, err := httpapi.ParseEndpoint(cfg.DockerListen)
	if err != nil {
		return err
	}
	if err := a.listeners.Bind(a.ctx, "docker", dockerEP, a.serveProxy); err != nil {
		return fmt.Errorf("docker listener %s: %w", cfg.DockerListen, err)
	}
	a.held.handOver()
	// Only now: on a VM's one or two CPUs, the manager's start would
	// delay the first answers.
	a.sandboxManager.start()
	a.logger.Info("agent started", "version", version, "pid", os.Getpid(), "listen", cfg.Listen, "docker_listen", cfg.DockerListen,
		"auth_token", a.token != "", "audit_log", cfg.AuditLog,
		"since_exec", time.Since(a.began), "set_clock", cfg.SetClock, "prepare_system", cfg.PrepareSystem)
	a.logger.Debug("configuration", "sources", cfg.Sources)
	<-a.ctx.Done()
	return nil
}

// serveAPI serves the control API on a listener of ep.
func (a *agent) serveAPI(ep httpapi.Endpoint) func(net.Listener) {
	return func(ln net.Listener) {
		go func() {
			if err := a.server.Serve(httpapi.PeerListener(ln, ep)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.logger.Error("listener stopped serving", "address", ln.Addr().String(), "err", err)
			}
		}()
	}
}

// serveProxy serves the Docker proxy on its listener.
func (a *agent) serveProxy(ln net.Listener) {
	a.proxyDone.Go(func() {
		if err := a.proxy.Serve(a.proxyCtx, ln); err != nil {
			a.logger.Error("docker proxy stopped", "address", ln.Addr().String(), "err", err)
		}
	})
}

// abort undoes, when the agent cannot serve, what build and serve began in
// the background: the journal, the port watcher and the sandbox manager,
// when they were started, are waited for and closed, so nothing writes to
// the state dir once run has returned. The daemons were never started.
func (a *agent) abort() {
	a.cancel()
	if a.sandboxManager == nil {
		return
	}
	a.sandboxManager.abandon()
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	if err := a.sandboxManager.close(ctx); err != nil {
		a.logger.Warn("close the sandbox manager", "err", err)
	}
}

// release lets go of what start holds, last made first, whether or not
// the agent served: the listeners still held are closed.
func (a *agent) release() {
	a.held.drop()
	a.stopProxy()
	a.beginStopping()
	a.cancel()
	a.closeAudit()
}

// setMaxProcs runs the agent's Go code on n CPUs (--max-procs), unless
// GOMAXPROCS in the environment says otherwise; n 0 leaves Go's default,
// every CPU.
//
// The default is one. The agent's heavy lifting happens in other
// processes (the runtimes, containerd, dockerd, the workloads) and in the
// kernel (splice, pipes); its own is answering requests and moving bytes,
// where a second CPU buys little and costs latency: with two, each request
// wakes an idle thread on the other CPU, and in a VM such a wake-up costs
// tens of microseconds. On two vCPUs, a ping's p50 over a unix socket was
// 95 µs with two and 48 µs with one, and eight connections got the same
// rate either way (BenchmarkPing). The other CPUs are left to the
// workloads.
func setMaxProcs(n int, getenv func(string) string) {
	if n > 0 && getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(n)
	}
}

// registerProcessMetrics adds the Go runtime's, the process's and the
// build's own metrics to reg. The start registers them once the control
// listeners are bound: making the Go runtime's collector describes every
// runtime metric, and nothing reads them before the first request.
//
// The collectors are the prometheus package's own: the collectors package
// wraps these very ones, and importing it would bring database/sql and
// its initialisation into the agent for a database collector it never
// uses.
func registerProcessMetrics(reg prometheus.Registerer) {
	reg.MustRegister(
		prometheus.NewGoCollector(),                                       //nolint:staticcheck // SA1019: what collectors.NewGoCollector returns
		prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}), //nolint:staticcheck // SA1019: as collectors'
		buildInfo(),
	)
}

func loadModules(logger *slog.Logger, names []string) error {
	release, err := kmod.Release()
	if err != nil {
		return err
	}
	l := kmod.Loader{Dir: "/lib/modules/" + release, SysModule: "/sys/module", Insert: kmod.InsertFile}
	inserted, err := l.Load(names...)
	if len(inserted) > 0 {
		logger.Info("loaded kernel modules", "modules", inserted)
	}
	return err
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	format := cfg.LogFormat
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func buildInfo() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace:   "arcbox_agent",
		Name:        "build_info",
		Help:        "The agent's build; the value is always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	g.Set(1)
	return g
}
