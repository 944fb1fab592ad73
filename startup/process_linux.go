package startup

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's start time; Linux
// fixes it at 100 for user space on every architecture the agent runs on.
const clockTicks = 100

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
	// The command name may hold spaces and parentheses: fields follow the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return time.Time{}, fmt.Errorf("/proc/self/stat: no ')' in %q", data)
	}
	fields := bytes.Fields(data[i+1:])
	const startTimeField = 22 - 3 // field 22, counted after pid and comm
	if len(fields) <= startTimeField {
		return time.Time{}, fmt.Errorf("/proc/self/stat: %d fields", len(fields))
	}
	ticks, err := strconv.ParseUint(string(fields[startTimeField]), 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}, err
	}
	sinceBoot := time.Duration(ts.Nano())
	startedAfterBoot := time.Duration(ticks) * time.Second / clockTicks
	return now.Add(-(sinceBoot - startedAfterBoot)), nil
}
