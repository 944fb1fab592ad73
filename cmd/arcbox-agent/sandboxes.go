package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/events"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/lifecycle"
	"github.com/arcbox/arcbox-agent/portwatch"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/oci"
	"github.com/arcbox/arcbox-agent/startup"
)

// pendingManager opens the event journal and starts the sandbox manager in
// the background once the control listeners are bound (start), so the
// listeners need not wait for them nor share the CPU with them; requests
// wait instead. When the manager cannot start (no OCI runtime, say), the agent
// serves on and the sandbox operations answer 503 with the reason, as the
// seed does; so does /v1/events when the journal cannot open.
type pendingManager struct {
	journalOpen chan struct{}
	journal     *events.Journal
	journalErr  error
	// ports is the port watcher's goroutine, which appends to the
	// journal: close waits for it before closing the journal.
	ports sync.WaitGroup

	done chan struct{}
	m    *sandbox.Manager
	err  error

	// began is taken by start, or by abandon when start never ran.
	began sync.Once
	run   func() // what start runs in the background

	// The runtime's phases, published to the journal once it is open:
	// until then (opened false) kept in early, at most maxEarlyEvents,
	// so a runtime start never waits for the journal.
	phaseMu sync.Mutex
	opened  bool
	early   []events.Event
}

// maxEarlyEvents bounds the runtime phases kept while the journal opens:
// a few starts' worth.
const maxEarlyEvents = 64

// newSandboxes makes the pending manager; start begins it. prepare, when
// set, makes the state dir ready first (mounts it from the data volume);
// when it fails, neither the journal nor the manager start, and both
// answer 503 with its error.
func newSandboxes(ctx context.Context, cfg *config, logger *slog.Logger, phases *startup.Phases, reg prometheus.Registerer,
	prepare func(context.Context) error) *pendingManager {
	s := &pendingManager{journalOpen: make(chan struct{}), done: make(chan struct{})}
	s.run = func() {
		defer close(s.done)
		if prepare != nil {
			began := time.Now()
			if err := prepare(ctx); err != nil {
				err = fmt.Errorf("the state dir %s is not ready on the data volume: %w", cfg.StateDir, err)
				logger.Error("sandboxes and events are unavailable", "err", err)
				s.journalErr, s.err = err, err
				close(s.journalOpen)
				s.flushEarly()
				return
			}
			phases.Observe("state_dir", began)
		}
		began := time.Now()
		s.journal, s.journalErr = events.Open(events.Config{
			Dir: cfg.EventJournalDir, Size: cfg.EventJournalSize, Logger: logger, Registerer: reg,
		})
		close(s.journalOpen)
		s.flushEarly()
		if s.journalErr == nil {
			s.watchPorts(ctx, cfg, logger)
		}
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
	}
	return s
}

// start opens the journal and starts the manager in the background; only
// its first call does.
func (s *pendingManager) start() { s.began.Do(func() { go s.run() }) }

// abandon makes the journal and the manager unavailable for good when
// start never ran (the agent could not serve), so close need not wait.
func (s *pendingManager) abandon() {
	s.began.Do(func() {
		s.journalErr, s.err = sandbox.ErrManagerClosed, sandbox.ErrManagerClosed
		close(s.journalOpen)
		s.flushEarly()
		close(s.done)
	})
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
// the journal its events and the port watcher's went to (the watcher ends
// with the agent's context, which has ended by now).
func (s *pendingManager) close(ctx context.Context) error {
	<-s.done
	var err error
	if s.m != nil {
		err = s.m.Close(ctx)
	}
	s.ports.Wait()
	if s.journal != nil {
		err = errors.Join(err, s.journal.Close())
	}
	return err
}

// stopAll stops every sandbox that is not stopped, all at once, for a
// system shutdown: each run gets SIGTERM, and SIGKILL when ctx's deadline
// comes.
func (s *pendingManager) stopAll(ctx context.Context) error {
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("the sandbox manager did not start in time to stop its sandboxes: %w", ctx.Err())
	}
	if s.m == nil {
		return nil
	}
	grace := time.Millisecond // a deadline already passed: kill at once
	if d, ok := ctx.Deadline(); ok && time.Until(d) > grace {
		grace = time.Until(d)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []error
	for _, info := range s.m.List(sandbox.Filter{}) {
		if info.State == sandbox.StateStopped || info.State == sandbox.StateFailed {
			continue
		}
		wg.Go(func() {
			if _, err := s.m.Stop(ctx, info.ID, grace); err != nil {
				mu.Lock()
				all = append(all, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(all...)
}

// publishRuntimePhase publishes a phase of a runtime start as a
// runtime.phase event (lifecycle.Config.OnPhase). Before the journal is
// open it is kept for it, never waited for; when the journal cannot open
// it is dropped, as every event is then.
func (s *pendingManager) publishRuntimePhase(p lifecycle.Phase) {
	attrs := map[string]string{"phase": p.Name, "took_ms": strconv.FormatInt(p.Took.Milliseconds(), 10)}
	if p.Status != "" {
		attrs["status"] = p.Status
	}
	ev := events.Event{Time: time.Now(), Action: "runtime.phase", Attributes: attrs}
	s.phaseMu.Lock()
	defer s.phaseMu.Unlock()
	switch {
	case !s.opened && len(s.early) < maxEarlyEvents:
		s.early = append(s.early, ev)
	case s.opened && s.journal != nil:
		s.journal.Append(ev)
	}
}

// flushEarly publishes the phases kept while the journal opened, once it
// has (or drops them, when it could not), in their order and before any
// later one.
func (s *pendingManager) flushEarly() {
	s.phaseMu.Lock()
	defer s.phaseMu.Unlock()
	s.opened = true
	if s.journal != nil {
		for _, ev := range s.early {
			s.journal.Append(ev)
		}
	}
	s.early = nil
}

// watchPorts publishes port.open and port.close events, until ctx ends,
// for the listeners of the guest and of the bridged sandboxes, whose
// network namespaces the sandbox backend keeps in its state dir.
func (s *pendingManager) watchPorts(ctx context.Context, cfg *config, logger *slog.Logger) {
	publish := func(action string) func(portwatch.Listener) {
		return func(l portwatch.Listener) {
			s.journal.Append(events.Event{SandboxID: l.Sandbox, Action: action, Attributes: map[string]string{
				"protocol": l.Protocol, "address": l.Address.String(), "port": strconv.Itoa(int(l.Port)),
			}})
		}
	}
	w := portwatch.New(portwatch.Config{
		NetnsDir: oci.NetnsDir(cfg.StateDir),
		OnOpen:   publish("port.open"),
		OnClose:  publish("port.close"),
		Logger:   logger.With("component", "portwatch"),
	})
	s.ports.Go(func() {
		if err := w.Run(ctx); err != nil && ctx.Err() == nil {
			logger.Warn("the port watcher stopped; no more port events", "err", err)
		}
	})
}
