package pid1

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// Reaper reaps orphans that the kernel reparents to the agent (as init or
// child subreaper) while leaving the exit status of every child the agent
// started itself to that child's own Wait. Children the agent owns must be
// started through Start, which records them under the same lock the reaper
// holds while it scans, so no exit is ever stolen.
//
// Children started by libraries (go-runc, os/exec in other packages) cannot
// all go through Start, so a zombie the reaper does not own is reaped only
// once it has stayed a zombie for a grace period: an owner blocked in Wait
// collects its child within microseconds, an orphan nobody waits for stays.
type Reaper struct {
	logger *slog.Logger
	proc   procReader
	grace  time.Duration // 0: reap at first sight
	now    func() time.Time

	mu    sync.Mutex
	owned map[int]uint64     // pid -> start time, so a reused pid is not mistaken for ours
	seen  map[int]zombieSeen // zombies not owned, waiting out the grace
}

type zombieSeen struct {
	start uint64
	at    time.Time
}

// DefaultReapGrace is how long a zombie the reaper does not own is left
// for some other Wait before the reaper takes it.
const DefaultReapGrace = time.Second

// procReader is the seam over /proc and wait4.
type procReader interface {
	children() ([]int, error)
	// stat returns a process's state letter and start time.
	stat(pid int) (state byte, start uint64, err error)
	reap(pid int) (bool, error)
}

// NewReaper returns a Reaper over the real /proc.
func NewReaper(logger *slog.Logger) *Reaper {
	return &Reaper{logger: logger, proc: sysProc{}, grace: DefaultReapGrace, owned: map[int]uint64{}}
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

// ReapOrphans reaps every child that has exited, is not owned and has
// waited out the grace, and returns their pids. Zombies still within the
// grace are remembered; Pending says whether there are any.
func (r *Reaper) ReapOrphans() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.now != nil {
		now = r.now()
	}
	if r.seen == nil {
		r.seen = map[int]zombieSeen{}
	}
	pids, err := r.proc.children()
	if err != nil {
		r.logger.Warn("list children to reap", "err", err)
		return nil
	}
	// A scan of the children files can miss a child that is moving between
	// threads: look again at the zombies already waiting out the grace.
	listed := map[int]bool{}
	for _, pid := range pids {
		listed[pid] = true
	}
	for pid := range r.seen {
		if !listed[pid] {
			pids = append(pids, pid)
		}
	}
	var reaped []int
	live := map[int]bool{}
	for _, pid := range pids {
		state, start, err := r.proc.stat(pid)
		if err != nil {
			continue // gone
		}
		live[pid] = true
		if state != 'Z' {
			continue
		}
		if ownedStart, ok := r.owned[pid]; ok && ownedStart == start {
			continue // its owner's Wait collects it
		}
		if r.grace > 0 {
			first, ok := r.seen[pid]
			if !ok || first.start != start {
				r.seen[pid] = zombieSeen{start: start, at: now}
				continue
			}
			if now.Sub(first.at) < r.grace {
				continue
			}
		}
		delete(r.seen, pid)
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
	for pid := range r.seen {
		if !live[pid] {
			delete(r.seen, pid) // some other Wait collected it
		}
	}
	if len(reaped) > 0 {
		r.logger.Debug("reaped orphans", "pids", reaped)
	}
	return reaped
}

// Pending reports whether zombies are waiting out the grace.
func (r *Reaper) Pending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen) > 0
}

// parseChildren parses a /proc/<pid>/task/<tid>/children file, pids
// separated by spaces. Only positive pids are kept: wait4 of 0 or of a
// negative pid would reap a process group.
func parseChildren(data []byte) []int {
	var pids []int
	for _, field := range bytes.Fields(data) {
		if pid, err := strconv.Atoi(string(field)); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// parseStat returns a process's state letter and start time (field 22, in
// clock ticks after boot) from its /proc/<pid>/stat, "pid (comm) state
// ...". The command name may hold anything, spaces and parentheses
// included: the fields after it follow the last ')'.
func parseStat(data []byte) (state byte, start uint64, err error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, errors.New("no ')' after the command name")
	}
	fields := bytes.Fields(data[i+1:])
	if len(fields) < 20 {
		return 0, 0, fmt.Errorf("%d fields after the command name, want at least 20", len(fields))
	}
	if len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("state %q is not one letter", fields[0])
	}
	start, err = strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("start time %q: %w", fields[19], err)
	}
	return fields[0][0], start, nil
}
