package oci

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// TestOCIStats reads a real sandbox's cgroup on each runtime: CPU time
// grows while a run burns CPU, memory grows by what a run leaves in
// /dev/shm (a tmpfs, charged to the sandbox), the pids limit is the
// sandbox's; a stopped sandbox has no stats.
func TestOCIStats(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			e := newOCIEnv(t, rt)
			id := e.create(sandbox.Spec{ID: "stats-" + rt}).ID
			ctx := context.Background()
			before, err := e.m.Stats(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if before.Pids.Current < 1 || before.Pids.Limit == nil || *before.Pids.Limit != uint64(sandbox.DefaultLimits.Pids) {
				t.Errorf("pids %+v (limit %v), want the init and the limit %d", before.Pids, before.Pids.Limit, sandbox.DefaultLimits.Pids)
			}
			if l := before.Memory.Limit; l == nil || *l != uint64(sandbox.DefaultLimits.MemoryMiB)<<20 {
				t.Errorf("memory limit %v, want %d MiB", l, sandbox.DefaultLimits.MemoryMiB)
			}

			const fill = 48 << 20
			e.sh(id, "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null")
			after, err := e.m.Stats(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if after.CPU.UsageUsec <= before.CPU.UsageUsec || after.CPU.UserUsec <= before.CPU.UserUsec {
				t.Errorf("CPU time did not grow: before %+v, after %+v", before.CPU, after.CPU)
			}
			// The file in /dev/shm stays charged to the sandbox; what was
			// charged before (the runtime's exec, page cache) may have
			// been freed meanwhile, so the fill is the bound, not before+fill.
			if after.Memory.Current < fill {
				t.Errorf("memory %d bytes (before %d) with a %d-byte file in /dev/shm, want at least that", after.Memory.Current, before.Memory.Current, fill)
			}
			if p := after.Memory.Peak; p != nil && *p < after.Memory.Current {
				t.Errorf("memory peak %d below the current %d", *p, after.Memory.Current)
			}
			t.Logf("stats after: cpu %+v, memory %d (peak %v), pids %d, io %+v, psi cpu %v",
				after.CPU, after.Memory.Current, after.Memory.Peak, after.Pids.Current, after.IO, after.Pressure.CPU)

			stopCtx, cancel := context.WithTimeout(ctx, time.Minute) // bounds a hang only
			defer cancel()
			if _, err := e.m.Stop(stopCtx, id, time.Second); err != nil {
				t.Fatal(err)
			}
			if _, err := e.m.Stats(ctx, id); !errors.Is(err, sandbox.ErrConflict) {
				t.Errorf("stats of a stopped sandbox: %v, want ErrConflict", err)
			}
		})
	}
}
