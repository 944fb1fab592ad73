// Package handlers implements the agent's HTTP API: one method per operation
// of openapi.yaml on API, which decodes and validates the request, calls one
// domain package, and encodes the answer. Handlers never touch the OS: a
// daemon's log, say, comes as a stream to copy.
//
// Where an endpoint is, by its path:
//
//	/livez /healthz /readyz /metrics /openapi.yaml   health.go
//	/v1/ping                                         ping.go
//	/v1/info                                         info.go
//	/v1/system/shutdown                              system.go
//	/v1/runtime/ensure, /v1/runtime/status           runtime.go
//	/v1/runtime/logs                                 runtime_logs.go
//	/v1/sandboxes, /v1/sandboxes/{id}[/stop]         sandboxes.go
//	/v1/sandboxes/{id}/run (NDJSON and WebSocket)    run.go
//	/v1/sandboxes/{id}/exec                          exec.go
//	/v1/sandboxes/{id}/checkpoint, /v1/snapshots...  snapshots.go
//	/v1/sandboxes/{id}/runs...                       runs.go
//	/v1/sandboxes/{id}/files...                      files.go
//	/v1/sandboxes/{id}/stats, /v1/stats              stats.go
//	/v1/events                                       events.go
//
// websocket.go holds what the run and exec WebSockets share (the checks
// before the upgrade, the first message, the output pump, close codes);
// validate.go the request checks every handler uses.
package handlers

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/clock"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sysinfo"
)

// Config is what New needs. Every field is required.
type Config struct {
	Version string
	Logger  *slog.Logger
	// Clock compares the guest clock with the host's and steps it.
	Clock *clock.Syncer
	// SystemInfo collects the guest's facts.
	SystemInfo func() (sysinfo.Info, error)
	// GuestStats reads the guest's resource use (/v1/stats); nil answers
	// 503.
	GuestStats func() (sysinfo.Stats, error)
	// Listeners reports whether every listener is bound, and their states.
	Listeners func() (bool, []httpapi.ListenerStatus)
	// Metrics serves the Prometheus registry.
	Metrics http.Handler
	// Spec is openapi.yaml, served as it was built.
	Spec []byte
	// Runtime starts and reports containerd and dockerd.
	Runtime Runtime
	// SandboxManager returns the sandbox manager, waiting for it while it
	// starts; an error (or a nil func) makes the sandbox operations answer
	// 503 with it as the reason.
	SandboxManager func(ctx context.Context) (SandboxManager, error)
	// Events returns the event journal, waiting for it while it opens; an
	// error (or a nil func) makes /v1/events answer 503 with the reason.
	Events func(ctx context.Context) (EventJournal, error)
	// Stopping ends when the agent begins to shut down, so streaming
	// responses end then rather than hold the shutdown up.
	Stopping context.Context
	// FileUploadLimit bounds one upload to a sandbox (a file or an
	// archive); 0 is DefaultFileUploadLimit.
	FileUploadLimit int64
	// Shares lists the VirtioFS shares mounted, for /v1/info; nil: none.
	Shares func() []api.Share
	// Shutdown orders the agent's shutdown with "poweroff" or "reboot",
	// grace bounding it, and returns the func that begins it, which the
	// handler calls once its answer is written; an error (classed
	// httpapi.ErrConflict when one is under way already) is answered as
	// is. nil answers 503.
	Shutdown func(action string, grace time.Duration) (begin func(), err error)
	// DefaultShutdownGrace is a shutdown request's grace when it names
	// none: the agent's --shutdown-timeout.
	DefaultShutdownGrace time.Duration
}

// StreamedBody says whether r's body is an upload (a file or an archive
// put into a sandbox), which its handler reads as a stream and bounds by
// Config.FileUploadLimit, rather than JSON of 1 MiB at most: the router's
// RouterConfig.StreamedBody.
func StreamedBody(r *http.Request) bool {
	if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/v1/sandboxes/") {
		return false
	}
	return strings.HasSuffix(r.URL.Path, "/files") || strings.HasSuffix(r.URL.Path, "/files/archive")
}

// API serves every operation of the contract.
type API struct {
	cfg Config
	// pingBody is GET /v1/ping's answer, the same for every ping: JSON
	// and its newline, encoded once.
	pingBody []byte
}

var _ api.ServerInterface = (*API)(nil)

// New returns the API.
func New(cfg Config) *API {
	return &API{cfg: cfg, pingBody: jsonLine(api.PingResponse{Message: "pong", Version: cfg.Version})}
}

func (a *API) log(r *http.Request) *slog.Logger {
	return httpapi.Logger(r.Context(), a.cfg.Logger)
}

// streamContext ends a long-lived response when its client goes away or
// the agent begins to shut down.
func (a *API) streamContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	if a.cfg.Stopping != nil {
		stop := context.AfterFunc(a.cfg.Stopping, cancel)
		return ctx, func() { stop(); cancel() }
	}
	return ctx, cancel
}
