package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// trimEvery is how often the agent looks whether it has gone quiet since
// it was last busy; quietAllocBytes is how much it may allocate in that
// time and still count as quiet (the port watcher's polls, a probe now and
// then); trimMinBytes is how much memory the heap must hold free for a
// trim to be worth its collection.
const (
	trimEvery       = 5 * time.Second
	quietAllocBytes = 1 << 20
	trimMinBytes    = 512 << 10
)

// trimWhenIdle gives the memory a burst left back to the system once the
// agent is quiet again. Go keeps a burst's garbage until its next
// collection, which an idle program makes only every two minutes, and
// returns freed pages only slowly after it: an agent idle after 10,000
// pings held 3-4 MiB more than before them, in a VM whose memory is the
// host's. Once an interval passes with next to no allocation after one
// with more, and the heap holds enough free, freeMemory collects
// and returns it, once per quiet spell. While the agent is busy nothing
// changes: a soft memory limit instead (tried) made the collector run
// without end under load and cut the ping rate of 8 clients by 60%.
// GOGC or GOMEMLIMIT in the environment leave Go's own tuning alone.
func trimWhenIdle(ctx context.Context, getenv func(string) string) {
	if getenv("GOGC") != "" || getenv("GOMEMLIMIT") != "" {
		return
	}
	go func() {
		t := time.NewTicker(trimEvery)
		defer t.Stop()
		var m memoryTrim
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if m.observe(readHeap()) {
					freeMemory()
				}
			}
		}
	}()
}

// freeMemory gives the garbage of a burst back to the system now: Go
// would keep it until its forced collection two minutes on, and its pages
// after that. Two collections, since what sync.Pools hold (the output
// buffers) survives one. trimWhenIdle calls it, and so does the sandbox
// manager once its sandboxes have been quiet for 5 s (sandbox.Config's
// OnIdle); after one, the heap holds too little free for the other.
func freeMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// heapSample is what trimWhenIdle reads of the heap: bytes allocated
// since the start, and bytes free in the heap that could go back to the
// system (free and unused, not yet released).
type heapSample struct {
	allocated uint64
	free      uint64
}

func readHeap() heapSample {
	s := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	metrics.Read(s)
	return heapSample{allocated: s[0].Value.Uint64(), free: s[1].Value.Uint64() + s[2].Value.Uint64()}
}

// memoryTrim decides, one interval at a time, when to trim: after a busy
// interval, at the first quiet one whose heap has enough to give back.
type memoryTrim struct {
	last    uint64 // allocated bytes at the last interval
	started bool
	pending bool // busy since the last trim
}

// observe takes an interval's sample and reports whether to trim now.
func (m *memoryTrim) observe(s heapSample) bool {
	delta := s.allocated - m.last
	first := !m.started
	m.last, m.started = s.allocated, true
	if first {
		m.pending = true // the start is a burst too
		return false
	}
	if delta >= quietAllocBytes {
		m.pending = true
		return false
	}
	if !m.pending || s.free < trimMinBytes {
		return false
	}
	m.pending = false
	return true
}
