package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/oci"
	"github.com/arcbox/arcbox-agent/startup"
)

// pendingManager starts the sandbox manager in the background, so the
// listeners need not wait for it; requests wait instead. When it cannot
// start (no OCI runtime, say), the agent serves on and the sandbox
// operations answer 503 with the reason, as the seed does.
type pendingManager struct {
	done chan struct{}
	m    *sandbox.Manager
	err  error
}

func startSandboxes(ctx context.Context, cfg *config, logger *slog.Logger, phases *startup.Phases, reg prometheus.Registerer) *pendingManager {
	s := &pendingManager{done: make(chan struct{})}
	go func() {
		defer close(s.done)
		began := time.Now()
		s.m, s.err = newSandboxManager(ctx, cfg, logger, reg)
		if s.err != nil {
			logger.Warn("sandboxes are unavailable; the rest of the agent serves", "err", s.err)
			return
		}
		phases.Observe("sandboxes", began)
	}()
	return s
}

// newSandboxManager builds the OCI backend and the sandbox manager over it.
func newSandboxManager(ctx context.Context, cfg *config, logger *slog.Logger, reg prometheus.Registerer) (*sandbox.Manager, error) {
	backend, err := oci.New(ctx, oci.Config{
		StateDir:      cfg.StateDir,
		Runtime:       ociRuntime(cfg),
		DefaultRootfs: cfg.SandboxRootfs,
		BusyboxPath:   cfg.BusyboxPath,
		BridgeCIDR:    cfg.SandboxCIDR,
		// nil MountRoots or Registries: the oci package's defaults.
		MountRoots:       cfg.SandboxMountRoots,
		ForbiddenPaths:   forbiddenPaths(cfg),
		Registries:       cfg.Registries,
		RegistryAuthFile: cfg.RegistryAuthFile,
		Logger:           logger,
	})
	if err != nil {
		return nil, fmt.Errorf("sandbox backend: %w", err)
	}
	return sandbox.NewManager(ctx, sandbox.Config{
		StateDir:   cfg.StateDir,
		IDRangeDir: cfg.SandboxIDRangeDir,
		BridgeCIDR: cfg.SandboxCIDR,
		Logger:     logger,
		Registerer: reg,
		OnIdle:     freeMemory,
	}, backend)
}

// wait waits for the manager to be started, or for ctx.
func (s *pendingManager) wait(ctx context.Context) (handlers.SandboxManager, error) {
	select {
	case <-s.done:
		if s.err != nil {
			return nil, s.err
		}
		return s.m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// close waits for the manager to have started, then closes it.
func (s *pendingManager) close(ctx context.Context) error {
	<-s.done
	if s.m == nil {
		return nil
	}
	return s.m.Close(ctx)
}
