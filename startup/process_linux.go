package startup

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ProcessStart returns when the kernel started this process, rounded down
// to the kernel's 10 ms clock tick; if that cannot be read, now.
//
// It is the earliest the process can have started, so a figure measured
// from it never understates and overstates by less than a tick. The
// kernel keeps no finer start: /proc/<pid>/stat gives the start (the fork,
// which the exec follows) in ticks only, and the figures it has in
// nanoseconds (schedstat's time run and time waited) add up to less than
// the process's age, so a start taken from them would understate.
// BenchmarkStartup (cmd/arcbox-agent) reports how much of its figure the
// rounding is.
func ProcessStart() time.Time {
	now := time.Now()
	start, err := processStart(now)
	if err != nil {
		return now
	}
	return start
}

func processStart(now time.Time) (time.Time, error) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return time.Time{}, err
	}
	after, err := startedAfterBoot(data)
	if err != nil {
		return time.Time{}, fmt.Errorf("/proc/self/stat: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}, err
	}
	sinceBoot := time.Duration(ts.Nano())
	return now.Add(-(sinceBoot - after)), nil
}
