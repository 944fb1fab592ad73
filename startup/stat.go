package startup

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's start time; Linux
// fixes it at 100 for user space on every architecture the agent runs on.
const clockTicks = 100

// startedAfterBoot reads how long after boot a process started from its
// /proc/<pid>/stat, "pid (comm) state ...": field 22, in clock ticks. The
// command name may hold spaces and parentheses: fields follow the last ')'.
func startedAfterBoot(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no ')' after the command name")
	}
	fields := bytes.Fields(stat[i+1:])
	const startTimeField = 22 - 3 // field 22, counted after pid and comm
	if len(fields) <= startTimeField {
		return 0, fmt.Errorf("%d fields after the command name, want at least %d", len(fields), startTimeField+1)
	}
	ticks, err := strconv.ParseUint(string(fields[startTimeField]), 10, 64)
	// A Duration holds 292 years of ticks; ticks times a second would
	// overflow after less than 3.
	if err != nil || ticks > math.MaxInt64/uint64(time.Second/clockTicks) {
		return 0, fmt.Errorf("start time %q is not a number of clock ticks", fields[startTimeField])
	}
	return time.Duration(ticks) * (time.Second / clockTicks), nil
}
