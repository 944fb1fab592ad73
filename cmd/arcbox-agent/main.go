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
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	arcboxagent "github.com/arcbox/arcbox-agent"
	"github.com/arcbox/arcbox-agent/clock"
	"github.com/arcbox/arcbox-agent/dockerproxy"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/kmod"
	"github.com/arcbox/arcbox-agent/netconf"
	"github.com/arcbox/arcbox-agent/pid1"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/startup"
	"github.com/arcbox/arcbox-agent/sysinfo"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

// runtimeStopTimeout bounds how long shutdown waits for dockerd and
// containerd, SIGTERM grace and SIGKILL included.
const runtimeStopTimeout = 30 * time.Second

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
		if err := runProbe(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "arcbox-agent: %v\n", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
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
		// An init that exits panics the kernel: power off instead.
		if perr := pid1.PowerOff(); perr != nil {
			fmt.Fprintf(os.Stderr, "arcbox-agent: power off: %v\n", perr)
		}
		select {}
	}
	if err != nil {
		os.Exit(1)
	}
}

// run is the agent: it returns when ctx ends (SIGTERM or SIGINT) and every
// request in flight has finished, or the shutdown deadline passed.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
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
	var warnings [][]any
	cfg, err := loadConfig(args, getenv, stdout, func(msg string, kv ...any) {
		warnings = append(warnings, append([]any{msg}, kv...))
	})
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	for _, w := range warnings {
		logger.Warn(w[0].(string), w[1:]...)
	}
	token, err := listenerAuth(cfg, func(listener string) {
		logger.Warn("serving a TCP listener without authentication (--insecure-loopback): any local user can reach it", "listener", listener)
	})
	if err != nil {
		return err
	}
	auditLog, closeAudit, err := openAuditLog(cfg, logger)
	if err != nil {
		return err
	}
	defer closeAudit()

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(),
	)
	phases := startup.New(reg, began)
	phases.Observe("config", configBegan)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	startProcess := (*exec.Cmd).Start
	if isInit {
		if mountErr != nil {
			logger.Error("mount the essential filesystems", "err", mountErr)
		}
		reaper := pid1.NewReaper(logger.With("component", "reaper"))
		go reaper.Run(ctx)
		startProcess = reaper.Start // so the reaper never takes a daemon's exit
		phases.Record("init", mountsTook, configBegan.Sub(began))
	}
	if len(cfg.Modules) > 0 {
		modulesBegan := time.Now()
		if err := loadModules(logger, cfg.Modules); err != nil {
			logger.Error("load kernel modules", "err", err)
		}
		phases.Observe("modules", modulesBegan)
	}
	if isInit || len(cfg.NetAddresses) > 0 {
		netBegan := time.Now()
		netCtx, cancelNet := context.WithTimeout(ctx, 5*time.Second)
		if err := netconf.System.Configure(netCtx, cfg.NetAddresses); err != nil {
			logger.Error("configure the network", "err", err)
		} else if len(cfg.NetAddresses) > 0 {
			logger.Info("configured the network", "addresses", cfg.NetAddresses)
		}
		cancelNet()
		phases.Observe("network", netBegan)
	}

	var setClock clock.Setter
	if cfg.SetClock {
		setClock = clock.SetRealtime
	}
	listeners := httpapi.NewListeners(httpapi.ListenersConfig{
		Logger:       logger.With("component", "listeners"),
		Phases:       phases,
		Registerer:   reg,
		AllowCIDs:    cfg.AllowCIDs,
		SocketGID:    cfg.SocketGID,
		HasSocketGID: cfg.HasSocketGID,
	})
	rt, err := newRuntime(cfg, logger, phases, reg, startProcess)
	if err != nil {
		return err
	}
	sandboxes := startSandboxes(ctx, cfg, logger, phases, reg)
	proxy, err := dockerproxy.New(dockerproxy.Config{Socket: cfg.DockerSocket, Logger: logger, Registerer: reg, Token: token})
	if err != nil {
		return err
	}
	stopping, beginStopping := context.WithCancel(context.Background())
	defer beginStopping()
	api := handlers.New(handlers.Config{
		Version:    version,
		Logger:     logger,
		Clock:      clock.NewSyncer(time.Now, setClock),
		SystemInfo: sysinfo.Source{}.Collect,
		Listeners:  listeners.Status,
		Metrics:    promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Spec:       arcboxagent.OpenAPI,
		Runtime:    rt,
		Sandboxes:  sandboxes.get,
		Stopping:   stopping,
	})
	srv := &http.Server{
		Handler: httpapi.NewRouter(httpapi.RouterConfig{API: api, Logger: logger, Registerer: reg,
			Token: token, Audit: auditLog}),
		// Each request learns who is calling (for the token check and the
		// audit log) from its connection's listener.
		ConnContext:       httpapi.ConnContext,
		ReadHeaderTimeout: httpapi.ReadHeaderTimeout,
		IdleTimeout:       httpapi.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(logger.With("component", "http").Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(beginStopping)
	serveOn := func(ep httpapi.Endpoint) func(net.Listener) {
		return func(ln net.Listener) {
			go func() {
				if err := srv.Serve(httpapi.PeerListener(ln, ep)); err != nil && !errors.Is(err, http.ErrServerClosed) {
					logger.Error("listener stopped serving", "address", ln.Addr().String(), "err", err)
				}
			}()
		}
	}
	for _, u := range cfg.Listen {
		ep, err := httpapi.ParseEndpoint(u)
		if err != nil {
			return err
		}
		if err := listeners.Bind(ctx, "control", ep, serveOn(ep)); err != nil {
			_ = srv.Close()
			return fmt.Errorf("listen on %s: %w", u, err)
		}
	}
	proxyCtx, stopProxy := context.WithCancel(context.Background())
	defer stopProxy()
	var proxyDone sync.WaitGroup
	dockerEP, err := httpapi.ParseEndpoint(cfg.DockerListen)
	if err != nil {
		return err
	}
	err = listeners.Bind(ctx, "docker", dockerEP, func(ln net.Listener) {
		proxyDone.Go(func() {
			if err := proxy.Serve(proxyCtx, ln); err != nil {
				logger.Error("docker proxy stopped", "address", ln.Addr().String(), "err", err)
			}
		})
	})
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("docker listener %s: %w", cfg.DockerListen, err)
	}
	logger.Info("agent started", "version", version, "pid", os.Getpid(), "listen", cfg.Listen, "docker_listen", cfg.DockerListen,
		"auth_token", token != "", "audit_log", cfg.AuditLog,
		"since_exec", time.Since(began), "set_clock", cfg.SetClock, "prepare_system", cfg.PrepareSystem)
	logger.Debug("configuration", "sources", cfg.Sources)

	<-ctx.Done()
	logger.Info("shutting down", "grace", cfg.ShutdownTimeout)
	listeners.MarkClosed()
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancelShutdown()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("requests still in flight at the deadline; closing them", "err", err)
		_ = srv.Close()
	}
	stopProxy()
	proxyDone.Wait()
	// The requests may have used up shutdownCtx; the sandboxes and the
	// daemons get their own time, so dockerd and containerd get SIGTERM
	// and their grace rather than an immediate SIGKILL.
	closeCtx, cancelClose := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancelClose()
	if err := sandboxes.close(closeCtx); err != nil {
		logger.Warn("close the sandbox manager", "err", err)
	}
	stopCtx, cancelStop := context.WithTimeout(context.Background(), runtimeStopTimeout)
	defer cancelStop()
	if err := rt.Shutdown(stopCtx); err != nil {
		logger.Warn("stop the runtime", "err", err)
	}
	logger.Info("stopped")
	return nil
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
