package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/events"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/oci"
	"github.com/arcbox/arcbox-agent/startup"
)

// pendingManager opens the event journal and starts the sandbox manager in
// the background, so the listeners need not wait for them; requests wait
// instead. When the manager cannot start (no OCI runtime, say), the agent
// serves on and the sandbox operations answer 503 with the reason, as the
// seed does; so does /v1/events when the journal cannot open.
type pendingManager struct {
	journalOpen chan struct{}
	journal     *events.Journal
	journalErr  error

	done chan struct{}
	m    *sandbox.Manager
	err  error
}

func startSandboxes(ctx context.Context, cfg *config, logger *slog.Logger, phases *startup.Phases, reg prometheus.Registerer) *pendingManager {
	s := &pendingManager{journalOpen: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		began := time.Now()
		s.journal, s.journalErr = events.Open(events.Config{
			Dir: cfg.EventJournalDir, Size: cfg.EventJournalSize, Logger: logger, Registerer: reg,
		})
		close(s.journalOpen)
		if s.journalErr != nil {
			// The sandboxes still work, their events kept in memory
			// where no one can subscribe to them.
			logger.Error("the event journal cannot open; /v1/events answers 503 until it can", "dir", cfg.EventJournalDir, "err", s.journalErr)
		} else {
			phases.Observe("events", began)
		}
		began = time.Now()
		s.m, s.err = newSandboxManager(ctx, cfg, logger, reg, s.journal)
		if s.err != nil {
			logger.Warn("sandboxes are unavailable; the rest of the agent serves", "err", s.err)
			return
		}
		phases.Observe("sandboxes", began)
	}()
	return s
}

// newSandboxManager builds the OCI backend and the sandbox manager over it,
// its events going to journal.
func newSandboxManager(ctx context.Context, cfg *config, logger *slog.Logger, reg prometheus.Registerer, journal *events.Journal) (*sandbox.Manager, error) {
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
		StateDir:       cfg.StateDir,
		IDRangeDir:     cfg.SandboxIDRangeDir,
		BridgeCIDR:     cfg.SandboxCIDR,
		Logger:         logger,
		Registerer:     reg,
		Events:         journal,
		MaxRuns:        cfg.SandboxMaxRuns,
		RunOutputBytes: cfg.SandboxRunOutputBytes,
		HangupGrace:    cfg.SandboxHangupGrace,
		OnIdle:         freeMemory,
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

// events waits for the event journal to be open, or for ctx.
func (s *pendingManager) events(ctx context.Context) (handlers.EventJournal, error) {
	select {
	case <-s.journalOpen:
		if s.journalErr != nil {
			return nil, s.journalErr
		}
		return s.journal, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// close waits for the manager to have started, then closes it, and then
// the journal its events went to.
func (s *pendingManager) close(ctx context.Context) error {
	<-s.done
	var err error
	if s.m != nil {
		err = s.m.Close(ctx)
	}
	if s.journal != nil {
		err = errors.Join(err, s.journal.Close())
	}
	return err
}
