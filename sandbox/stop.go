package sandbox

// Ending a sandbox: Stop, Remove, and the TTL that does both.

import (
	"context"
	"fmt"
	"os"
	"time"
)

// How long a workload gets to end once asked (SIGTERM).
const (
	// DefaultStopTimeout is how long Stop waits for a workload when given 0.
	DefaultStopTimeout = 30 * time.Second
	// ttlStopTimeout is the grace a workload gets when its sandbox's TTL ends.
	ttlStopTimeout = 10 * time.Second
)

// Stop stops a sandbox: every run in progress gets SIGTERM, then SIGKILL
// once timeout (0: 30 s) has passed, then the sandbox's init is ended and
// its container released; the sandbox ends stopped (failed if the
// teardown fails). Stopping a stopped or failed sandbox changes nothing.
// When ctx ends first Stop returns its error; the stop goes on.
func (m *Manager) Stop(ctx context.Context, id string, timeout time.Duration) (Info, error) {
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	m.mu.Lock()
	sb, err := m.lookupLocked(id)
	if err != nil {
		m.mu.Unlock()
		return Info{}, err
	}
	if m.closed {
		m.mu.Unlock()
		return Info{}, fmt.Errorf("stop sandbox %q: %w", id, errClosed)
	}
	m.wg.Add(1)
	m.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer m.wg.Done()
		done <- m.stop(sb, timeout)
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		return Info{}, fmt.Errorf("stop sandbox %q: %w", id, ctx.Err())
	}
	if err != nil {
		return Info{}, fmt.Errorf("stop sandbox %q: %w", id, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.infoLocked(sb), nil
}

// stop takes a sandbox to stopped; grace is the workload's, after SIGTERM.
// The error is that of the stopped state's record: the sandbox is stopped,
// but the next agent would not know it.
func (m *Manager) stop(sb *sandbox, grace time.Duration) error {
	m.mu.Lock()
	runs := sb.runs.running()
	switch sb.rec.State {
	case StateStarting, StateReady, StateRunning:
		m.transitionLocked(sb, StateStopping, nil)
		if sb.startCancel != nil {
			sb.startCancel(nil)
		}
	}
	m.mu.Unlock()
	m.persistLogged(sb)

	for _, run := range runs {
		run.terminate(grace, m.afterFunc)
	}

	sb.opMu.Lock()
	defer sb.opMu.Unlock()
	m.mu.Lock()
	st := sb.rec.State
	m.mu.Unlock()
	if st != StateStopping {
		return nil // stopped by another call meanwhile, or never live
	}
	for _, run := range runs {
		<-run.done
	}
	if err := m.backend.Stop(m.baseCtx, sb.id); err != nil {
		m.log.Error("stop sandbox", "id", sb.id, "err", err)
		m.fail(sb, fmt.Sprintf("stop: %v", err))
		return nil
	}
	m.mu.Lock()
	m.transitionLocked(sb, StateStopped, nil)
	m.mu.Unlock()
	if err := m.persist(sb); err != nil {
		m.log.Error("write sandbox record", "id", sb.id, "err", err)
		return fmt.Errorf("it is stopped, but its record could not be written: %w", err)
	}
	return nil
}

// Remove removes a sandbox and everything it left on the machine: its
// container, mounts, cgroup, processes and files. A live sandbox is stopped
// first (its runs are killed at once); one with a run in progress needs force,
// else the error is ErrConflict.
func (m *Manager) Remove(ctx context.Context, id string, force bool) error {
	m.mu.Lock()
	sb, err := m.lookupLocked(id)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("remove sandbox %q: %w", id, errClosed)
	}
	if sb.rec.State == StateRunning && !force {
		m.mu.Unlock()
		return Errorf(ErrConflict, "sandbox %q has runs in progress; stop it or remove with force", id)
	}
	place, err := m.removals.reserve()
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("remove sandbox %q: %w", id, err)
	}
	m.wg.Add(1)
	m.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer m.wg.Done()
		release, err := place.wait(m.baseCtx)
		if err != nil {
			done <- fmt.Errorf("remove sandbox %q: %w", id, errClosed)
			return
		}
		defer release()
		done <- m.remove(sb)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("remove sandbox %q: %w", id, ctx.Err())
	}
}

func (m *Manager) remove(sb *sandbox) error {
	defer m.worked()
	m.mu.Lock()
	live := sb.rec.State.live()
	m.mu.Unlock()
	if live {
		_ = m.stop(sb, 0) // grace 0: a workload is killed at once; its record goes
	}
	sb.opMu.Lock()
	defer sb.opMu.Unlock()
	m.mu.Lock()
	if sb.removed {
		m.mu.Unlock()
		return nil
	}
	m.mu.Unlock()
	if err := m.destroy(m.baseCtx, sb.id); err != nil {
		return fmt.Errorf("remove sandbox %q: %w", sb.id, err)
	}
	sb.persistMu.Lock()
	err := os.RemoveAll(sb.dir)
	if err == nil {
		m.mu.Lock()
		sb.removed = true
		m.mu.Unlock()
	}
	sb.persistMu.Unlock()
	if err != nil {
		return fmt.Errorf("remove sandbox %q: %w", sb.id, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if sb.stopTTL != nil {
		sb.stopTTL()
	}
	delete(m.boxes, sb.id)
	if sb.rec.IDMap != nil {
		m.releaseRange(sb.rec.IDMap.HostID)
	}
	m.metrics.move(sb.rec.State, "")
	m.publishLocked(sb, ActionRemoved, nil)
	return nil
}

// armTTL starts the TTL timer of a re-adopted sandbox.
func (m *Manager) armTTL(sb *sandbox) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.armTTLLocked(sb)
}

// armTTLLocked starts sb's TTL timer; m.mu is held.
func (m *Manager) armTTLLocked(sb *sandbox) {
	ttl := sb.rec.Spec.TTL
	if ttl <= 0 || sb.stopTTL != nil {
		return
	}
	left := max(sb.rec.CreatedAt.Add(ttl).Sub(m.now()), 0)
	sb.stopTTL = m.afterFunc(left, func() { m.expire(sb) })
}

// expire stops and removes a sandbox whose TTL has passed.
func (m *Manager) expire(sb *sandbox) {
	m.mu.Lock()
	if m.closed || sb.removed {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()
	m.log.Info("sandbox TTL expired", "id", sb.id, "ttl", sb.rec.Spec.TTL)
	m.mu.Lock()
	live := sb.rec.State.live()
	m.mu.Unlock()
	if live {
		_ = m.stop(sb, ttlStopTimeout) // logged; the remove below clears the record
	}
	release, err := m.removals.turn(m.baseCtx)
	if err != nil {
		return // the agent is shutting down; the next one expires it
	}
	defer release()
	if err := m.remove(sb); err != nil {
		m.log.Error("remove expired sandbox", "id", sb.id, "err", err)
	}
}
