package main

import "testing"

// TestMemoryTrimOncePerQuietSpell: the agent trims at the first quiet
// interval after a busy one (or after its start) when the heap has enough
// free, once, and never while it is busy.
func TestMemoryTrimOncePerQuietSpell(t *testing.T) {
	const mib = 1 << 20
	var m memoryTrim
	var allocated uint64
	step := func(alloc, free uint64) bool {
		allocated += alloc
		return m.observe(heapSample{allocated: allocated, free: free})
	}
	for i, c := range []struct {
		what        string
		alloc, free uint64
		want        bool
	}{
		{"the first sample only starts counting", 0, 8 * mib, false},
		{"quiet after the start, with memory to give back", 0, 2 * mib, true},
		{"quiet again: already trimmed", 0, 2 * mib, false},
		{"busy", 30 * mib, 6 * mib, false},
		{"still busy", 30 * mib, 6 * mib, false},
		{"quiet after the burst", 100 << 10, 6 * mib, true},
		{"quiet", 100 << 10, 6 * mib, false},
		{"busy", 2 * mib, 100 << 10, false},
		{"quiet, but too little free to be worth a collection", 0, 100 << 10, false},
		{"quiet, and now there is", 0, 1 * mib, true},
	} {
		if got := step(c.alloc, c.free); got != c.want {
			t.Errorf("step %d (%s): trim %v, want %v", i, c.what, got, c.want)
		}
	}
}

// TestReadHeap: the runtime has the metrics the trim reads.
func TestReadHeap(t *testing.T) {
	before := readHeap()
	sink = make([]byte, 1<<20)
	if after := readHeap(); after.allocated < before.allocated+1<<20 {
		t.Errorf("allocated %d then %d after a 1 MiB allocation", before.allocated, after.allocated)
	}
}

var sink []byte
