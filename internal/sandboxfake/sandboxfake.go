// Package sandboxfake is a sandbox manager for tests of the run and exec
// WebSockets through the agent's own router and handlers, without
// sandboxes: the handlers' tests send raw frames to it, the SDK's tests
// go through their sessions.
package sandboxfake

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// SignalWorkloads is a sandbox manager whose every workload writes
// "ready" on stdout, then waits for a signal on its ExecIO.Signals and
// exits with 128 + its number, as a command killed by it would; a
// hang-up (its context ending) ends it too, with 128 + SIGHUP. It
// records the signals that reached it and how its workload ended. Only
// what the run and exec WebSockets call is implemented; the rest of the
// interface is left nil. One SignalWorkloads serves one workload.
type SignalWorkloads struct {
	handlers.SandboxManager

	ended chan string // "signal", "hang-up", "no signals channel" or "output: ..."
	mu    sync.Mutex
	sigs  []sandbox.Signal
}

// NewSignalWorkloads returns a SignalWorkloads for one workload.
func NewSignalWorkloads() *SignalWorkloads {
	return &SignalWorkloads{ended: make(chan string, 1)}
}

// Get says every sandbox is ready.
func (f *SignalWorkloads) Get(id string) (sandbox.Info, error) {
	return sandbox.Info{ID: id, State: sandbox.StateReady}, nil
}

// ResolveCmd takes every command as it is.
func (f *SignalWorkloads) ResolveCmd(_ string, p sandbox.Process) (sandbox.Process, error) {
	return p, nil
}

// Exec runs the workload, whatever the command.
func (f *SignalWorkloads) Exec(ctx context.Context, _ string, _ sandbox.Process, eio sandbox.ExecIO, out func(sandbox.Output) error) (int, error) {
	if eio.Signals == nil {
		f.ended <- "no signals channel"
		return -1, errors.New("no signals channel")
	}
	if err := out(sandbox.Output{Stream: sandbox.StreamStdout, Data: []byte("ready\n")}); err != nil {
		f.ended <- "output: " + err.Error()
		return -1, err
	}
	select {
	case sig := <-eio.Signals:
		f.mu.Lock()
		f.sigs = append(f.sigs, sig)
		f.mu.Unlock()
		f.ended <- "signal"
		return 128 + int(sig), nil
	case <-ctx.Done():
		f.ended <- "hang-up"
		return 128 + int(unix.SIGHUP), ctx.Err()
	}
}

// Signals returns the signals that reached the workload.
func (f *SignalWorkloads) Signals() []sandbox.Signal {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sigs)
}

// End waits for how the workload ended: "signal", "hang-up", or what
// went wrong.
func (f *SignalWorkloads) End(t testing.TB) string {
	t.Helper()
	select {
	case how := <-f.ended:
		return how
	case <-time.After(time.Minute): // a failure guard only
		t.Fatal("the workload has not ended within a minute")
		return ""
	}
}

// Handler is the agent's router and handlers over m.
func Handler(m handlers.SandboxManager) http.Handler {
	logger := slog.New(slog.DiscardHandler)
	a := handlers.New(handlers.Config{
		Logger:         logger,
		SandboxManager: func(context.Context) (handlers.SandboxManager, error) { return m, nil },
	})
	return httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: logger, Registerer: prometheus.NewRegistry()})
}
