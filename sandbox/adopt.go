package sandbox

// Re-adoption: a new Manager takes back the sandboxes an earlier agent
// recorded.

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// readopt loads the records in the state dir and brings each sandbox back.
func (m *Manager) readopt(ctx context.Context) error {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return Errorf(ErrUnavailable, "read %s: %w", m.dir, err)
	}
	var recs []*sandbox
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		id := e.Name()
		dir := filepath.Join(m.dir, id)
		rec, store, err := readRecord(dir)
		if err != nil {
			// A directory without a record is a create that never got
			// far, or debris: nothing refers to it, so clear it.
			m.log.Warn("removing a sandbox directory without a usable record", "id", id, "err", err)
			if ValidateID(id) == nil {
				if err := m.destroy(ctx, id); err != nil {
					m.log.Error("clear sandbox debris", "id", id, "err", err)
					continue
				}
			}
			if err := os.RemoveAll(dir); err != nil {
				m.log.Error("clear sandbox debris", "id", id, "err", err)
			}
			continue
		}
		if rec.Restored != nil && rec.ReadyAt.IsZero() {
			// A restore that never got its sandbox ready (the agent died
			// in it, or in cleaning up after it): a restore leaves a ready
			// sandbox or none, so clear it. Should that fail, it is
			// listed (failed) rather than hidden with its address.
			m.log.Warn("removing a sandbox whose restore did not finish", "id", id, "snapshot", rec.Restored.SnapshotID)
			err := m.destroy(ctx, id)
			if err == nil {
				err = os.RemoveAll(dir)
			}
			if err == nil {
				continue // its range's claim is swept below
			}
			m.log.Error("clear a restore that did not finish", "id", id, "err", err)
		}
		if rec.IPAddress != "" {
			if err := m.reserveAddress(id, rec.IPAddress); err != nil {
				// Two records with one address, or a range that changed:
				// the sandbox keeps running but says so.
				m.log.Error("sandbox address not reserved", "id", id, "addr", rec.IPAddress, "err", err)
			}
		}
		if rec.IDMap != nil {
			if err := m.reclaimRange(rec.IDMap.HostID); err != nil {
				m.log.Error("sandbox id range not claimed", "id", id, "host_id", rec.IDMap.HostID, "err", err)
			}
		}
		recs = append(recs, &sandbox{id: id, dir: dir, rec: rec, store: store})
	}
	held := map[uint32]bool{}
	for _, sb := range recs {
		if sb.rec.IDMap != nil {
			held[sb.rec.IDMap.HostID] = true
		}
	}
	m.sweepRanges(held)
	slices.SortFunc(recs, func(a, b *sandbox) int {
		return cmp.Or(a.rec.CreatedAt.Compare(b.rec.CreatedAt), cmp.Compare(a.id, b.id))
	})
	for _, sb := range recs {
		m.seq++
		sb.seq = m.seq
		m.boxes[sb.id] = sb
		m.metrics.move("", sb.rec.State)
		m.adopt(ctx, sb)
		m.armTTL(sb)
	}
	return nil
}

// adopt brings back one sandbox recorded by an earlier agent.
func (m *Manager) adopt(ctx context.Context, sb *sandbox) {
	log := m.log.With("id", sb.id)
	switch sb.rec.State {
	case StateStopped, StateFailed:
		return // nothing runs; the files wait for Remove
	case StateStopping:
		// The agent died while stopping it: finish.
		if err := m.backend.Stop(ctx, sb.id); err != nil {
			m.fail(sb, fmt.Sprintf("stop interrupted by an agent restart, then: %v", err))
			return
		}
		m.mu.Lock()
		m.transitionLocked(sb, StateStopped, nil)
		m.mu.Unlock()
		m.persistLogged(sb)
		return
	case StateStarting:
		if err := m.backend.Stop(ctx, sb.id); err != nil {
			log.Error("release the container of a start cut short", "err", err)
		}
		m.fail(sb, "the agent restarted while the sandbox was starting")
		return
	}
	// ready or running: does its init still run?
	exited, alive, err := m.backend.Adopt(ctx, sb.id)
	if err != nil || !alive {
		why := "init exited while the agent was down"
		if err != nil {
			why = fmt.Sprintf("cannot take the container back after an agent restart: %v", err)
		}
		log.Warn("sandbox lost while the agent was down", "reason", why)
		if err := m.backend.Stop(ctx, sb.id); err != nil {
			log.Error("release the container of a lost sandbox", "err", err)
		}
		m.fail(sb, why)
		return
	}
	if sb.rec.State == StateRunning {
		// The runs' output went nowhere once the agent died (it was kept
		// in its memory), and their exits cannot be known: record them as
		// lost, listed so, and clear what is left of them, so the sandbox
		// is ready for the next. Detached runs too: the agent is their
		// only reader and their only waiter.
		if err := m.backend.KillWorkloads(ctx, sb.id); err != nil {
			log.Error("kill the processes of lost runs", "err", err)
		}
		lost := sb.rec.Runs
		if sb.rec.Run != nil {
			lost = append(lost, *sb.rec.Run)
		}
		var cmds []string
		for _, r := range lost {
			cmds = append(cmds, fmt.Sprintf("%q", r.Cmd))
		}
		note := "last run lost: the agent restarted while it ran"
		if len(lost) > 1 {
			note = fmt.Sprintf("%d runs lost: the agent restarted while they ran", len(lost))
		}
		if len(cmds) > 0 {
			note += " (" + strings.Join(cmds, ", ") + ")"
		}
		code := ExitLost
		m.mu.Lock()
		for _, r := range lost {
			m.addLostRunLocked(sb, r)
		}
		sb.rec.Run, sb.rec.Runs = nil, nil
		sb.rec.LastExitCode = &code
		sb.rec.LastExitedAt = m.now()
		sb.rec.Error = recordText(note)
		m.transitionLocked(sb, StateReady, map[string]string{"exit_code": strconv.Itoa(code), "error": sb.rec.Error}, ActionIdle)
		m.mu.Unlock()
		m.persistLogged(sb)
		log.Warn("runs lost across an agent restart", "runs", len(lost))
	}
	m.watch(sb, exited)
}

// addLostRunLocked lists a run that was in progress while the agent
// restarted, as lost, and publishes its run.exited; m.mu is held.
func (m *Manager) addLostRunLocked(sb *sandbox, rec runRecord) {
	id := rec.ID
	if id == "" || sb.runs.byID[id] != nil {
		id = sb.runs.newID() // an earlier agent's run, which had none
	}
	r := newActiveRun(id, Process{Cmd: rec.Cmd}, rec.StartedAt, 1)
	r.cmd = rec.Cmd
	r.detached = rec.Detached
	r.listed = true
	r.state = RunLost
	r.ended = m.now()
	r.errText = "lost: the agent restarted while it ran; its output and exit are not known, and what was left of it was killed"
	r.out.close()
	close(r.pumping)
	close(r.done)
	sb.runs.add(r)
	sb.runs.finish(r, m.cfg.RunOutputBytes*finishedOutputRuns)
	m.publishLocked(sb, ActionRunExited, map[string]string{"run_id": id, "exit_code": strconv.Itoa(ExitLost), "error": "lost across an agent restart"})
}
