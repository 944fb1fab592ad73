package startup

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ProcessStart returns when the kernel started this process (its exec), to
// the kernel's 10 ms precision; if that cannot be read, now.
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
