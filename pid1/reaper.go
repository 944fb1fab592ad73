package pid1

import (
	"log/slog"
	"os/exec"
	"sync"
)

// Reaper reaps orphans that the kernel reparents to the agent (as init or
// child subreaper) while leaving the exit status of every child the agent
// started itself to that child's own Wait. Children the agent owns must be
// started through Start, which records them under the same lock the reaper
// holds while it scans, so no exit is ever stolen.
type Reaper struct {
	logger *slog.Logger
	proc   procReader

	mu    sync.Mutex
	owned map[int]uint64 // pid -> start time, so a reused pid is not mistaken for ours
}

// procReader is the seam over /proc and wait4.
type procReader interface {
	children() ([]int, error)
	// stat returns a process's state letter and start time.
	stat(pid int) (state byte, start uint64, err error)
	reap(pid int) (bool, error)
}

// NewReaper returns a Reaper over the real /proc.
func NewReaper(logger *slog.Logger) *Reaper {
	return &Reaper{logger: logger, proc: sysProc{}, owned: map[int]uint64{}}
}

// Start starts cmd as a child the agent owns: its exit is left to cmd.Wait.
func (r *Reaper) Start(cmd *exec.Cmd) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	_, start, _ := r.proc.stat(pid)
	r.owned[pid] = start
	return nil
}

// ReapOrphans reaps every child that has exited and is not owned, and
// returns their pids.
func (r *Reaper) ReapOrphans() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	pids, err := r.proc.children()
	if err != nil {
		r.logger.Warn("list children to reap", "err", err)
		return nil
	}
	var reaped []int
	live := map[int]bool{}
	for _, pid := range pids {
		live[pid] = true
		state, start, err := r.proc.stat(pid)
		if err != nil || state != 'Z' {
			continue
		}
		if ownedStart, ok := r.owned[pid]; ok && ownedStart == start {
			continue // its owner's Wait collects it
		}
		if ok, err := r.proc.reap(pid); err != nil {
			r.logger.Debug("reap orphan", "pid", pid, "err", err)
		} else if ok {
			reaped = append(reaped, pid)
		}
	}
	for pid := range r.owned {
		if !live[pid] {
			delete(r.owned, pid) // waited for by its owner
		}
	}
	if len(reaped) > 0 {
		r.logger.Debug("reaped orphans", "pids", reaped)
	}
	return reaped
}
