package sandbox

// Stats: a live sandbox's resource use, read from its cgroup by the
// backend.

import (
	"context"
	"fmt"
	"time"

	"github.com/arcbox/arcbox-agent/sysinfo"
)

// Stats is a sandbox's resource use at Time, from its cgroup. Counters
// (CPU time, IO) count from the sandbox's start.
type Stats struct {
	Time   time.Time
	CPU    CPUStats
	Memory MemoryStats
	Pids   PidsStats
	// IO is nil where the cgroup keeps no IO accounting (its io or blkio
	// controller is not enabled).
	IO       *IOStats
	Pressure sysinfo.PressureSet
}

// CPUStats is the CPU time the sandbox's processes used, in microseconds.
type CPUStats struct {
	UsageUsec, UserUsec, SystemUsec uint64
	// Throttling is nil where the kernel reports none (a cgroup without
	// the cpu controller).
	Throttling *CPUThrottling
}

// CPUThrottling is how often the CPU limit held the sandbox back:
// of Periods enforcement periods, ThrottledPeriods ran out of quota, for
// ThrottledUsec in all.
type CPUThrottling struct {
	Periods, ThrottledPeriods, ThrottledUsec uint64
}

// MemoryStats is the sandbox's memory, in bytes.
type MemoryStats struct {
	Current uint64
	// Peak is the most it used since it started; nil where the kernel
	// keeps no peak (cgroup v2 before Linux 5.19).
	Peak *uint64
	// Limit is nil when there is none.
	Limit *uint64
}

// PidsStats is the sandbox's number of tasks (processes and threads).
type PidsStats struct {
	Current uint64
	Limit   *uint64 // nil when there is none
}

// IOStats is the block IO of the sandbox, summed over devices.
type IOStats struct {
	ReadBytes, WriteBytes, ReadOps, WriteOps uint64
}

// Stats reads a sandbox's resource use. The sandbox must be ready or
// running (ErrConflict else): only then has it a cgroup to read.
func (m *Manager) Stats(ctx context.Context, id string) (Stats, error) {
	sb, err := m.statsSandbox(id)
	if err != nil {
		return Stats{}, err
	}
	st, err := m.backend.Stats(ctx, id)
	// A sandbox that stopped meanwhile took its cgroup with it: say that,
	// not how the read failed; and a sandbox removed and made again under
	// the same id is not the one read.
	sb2, err2 := m.statsSandbox(id)
	switch {
	case err2 != nil:
		return Stats{}, err2
	case sb2 != sb:
		return Stats{}, Errorf(ErrConflict, "sandbox %q was made again while its stats were read", id)
	case err != nil:
		return Stats{}, fmt.Errorf("stats of sandbox %q: %w", id, err)
	}
	st.Time = m.now()
	return st, nil
}

// statsSandbox is the sandbox id when its init runs.
func (m *Manager) statsSandbox(id string) (*sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("stats of sandbox %q: %w", id, errClosed)
	}
	sb, err := m.lookupLocked(id)
	if err != nil {
		return nil, err
	}
	if st := sb.rec.State; st != StateReady && st != StateRunning {
		return nil, Errorf(ErrConflict, "sandbox %q is %s: stats are read only while its init runs (ready or running)", id, st)
	}
	return sb, nil
}
