package main

import (
	"math"
	"testing"
)

func TestMemoryLimitFollowsTheLiveHeap(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int64
	}{
		{0, memoryFloor},
		{1 << 20, memoryFloor}, // 2 MiB + 4 MiB: under the floor
		{10 << 20, 24 << 20},   // twice the live heap, and the headroom
		{math.MaxUint64, math.MaxInt64},
	} {
		if got := memoryLimitFor(c.live); got != c.want {
			t.Errorf("memoryLimitFor(%d) = %d, want %d", c.live, got, c.want)
		}
	}
}
