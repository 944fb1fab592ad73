package main

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// memoryFloor is the soft memory limit of the Go runtime while the live
// heap is small: an idle agent is a few MiB of heap and stacks beside the
// pages of its binary, and the VM's memory is the host's.
const memoryFloor = 8 << 20

// memoryHeadroom is what the limit leaves, above twice the live heap (the
// heap GOGC=100 lets grow before it collects), for the stacks and the
// runtime's own structures.
const memoryHeadroom = 4 << 20

// limitMemory keeps the agent's memory near its live heap. Left alone,
// Go lets a heap grow to 4 MiB at least before collecting it and returns
// freed pages to the system only slowly, so a burst of requests left an
// idle agent 4-5 MiB larger than it need be. A soft memory limit makes
// the collector and the scavenger hold the floor; after each collection
// it is raised to follow the live heap, so it never makes the collector
// run more often than GOGC=100 would once the heap is larger (a fixed
// limit below the live heap would have it collect without end). It is
// set from the first collection on: one forced earlier, during startup,
// would cost the idle agent the collector's own memory (about 1 MiB) for
// nothing. GOGC or GOMEMLIMIT in the environment leave Go's own tuning
// alone.
func limitMemory(getenv func(string) string) {
	if getenv("GOGC") != "" || getenv("GOMEMLIMIT") != "" {
		return
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var afterNextGC func()
	afterNextGC = func() {
		// A cleanup runs after the collection that found its object
		// unreachable: one per cycle. The object holds a pointer, so it is
		// never a tiny allocation sharing its block.
		runtime.AddCleanup(&struct{ _ *byte }{}, func(struct{}) {
			metrics.Read(sample)
			debug.SetMemoryLimit(memoryLimitFor(sample[0].Value.Uint64()))
			afterNextGC()
		}, struct{}{})
	}
	afterNextGC()
}

// memoryLimitFor is the soft memory limit for a live heap of live bytes.
func memoryLimitFor(live uint64) int64 {
	if live > (math.MaxInt64-memoryHeadroom)/2 {
		return math.MaxInt64
	}
	return max(memoryFloor, int64(2*live+memoryHeadroom))
}
