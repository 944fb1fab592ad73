package startup

import (
	"fmt"
	"testing"
	"time"
)

// statLine is a /proc/<pid>/stat line as the kernel writes it (fields from
// proc_pid_stat(5)), with the given command name and start time in ticks.
func statLine(comm string, ticks uint64) string {
	return fmt.Sprintf("4242 (%s) R 1 4242 4242 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 %d 2400256 180 "+
		"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n", comm, ticks)
}

// FuzzStartedAfterBoot checks the start time read from /proc/self/stat:
// whatever the command name holds, the ticks written come back, as a
// Duration when one can hold them (the ticks of 2.9 years once overflowed
// it) and as an error naming the start time when not; arbitrary bytes
// never panic the parser.
func FuzzStartedAfterBoot(f *testing.F) {
	f.Add("arcbox-agent", uint64(123), []byte(statLine("arcbox-agent", 5)))
	f.Add("a) R 1 2 (b", uint64(0), []byte("1 (a) R 1 2 3"))
	f.Add(") ) )", uint64(9_300_000_000), []byte(")"))       // 2.95 years of ticks
	f.Add("new\nline", uint64(1<<63/10_000_000), []byte("")) // the last a Duration holds
	f.Add("", uint64(1<<64-1), []byte(statLine("x", 1)[:70]))
	f.Fuzz(func(t *testing.T, comm string, ticks uint64, raw []byte) {
		if _, err := startedAfterBoot(raw); err != nil && err.Error() == "" {
			t.Fatal("an empty error")
		}
		line := statLine(comm, ticks)
		got, err := startedAfterBoot([]byte(line))
		const tick = time.Second / clockTicks
		if ticks > uint64(1<<63-1)/uint64(tick) {
			if err == nil {
				t.Fatalf("%d ticks, past what a Duration holds: got %v", ticks, got)
			}
			return
		}
		if err != nil || got < 0 || uint64(got/tick) != ticks || got%tick != 0 {
			t.Fatalf("%q: got %v, %v; want %d ticks", line, got, err, ticks)
		}
	})
}
