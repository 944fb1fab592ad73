package pid1

import (
	"bytes"
	"fmt"
	"strconv"
	"testing"
)

// statLine is a /proc/<pid>/stat line as the kernel writes it (fields from
// proc_pid_stat(5)), with the given command name, state and start time.
func statLine(comm string, state byte, start uint64) string {
	return fmt.Sprintf("4242 (%s) %c 1 4242 4242 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 %d 2400256 180 "+
		"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n", comm, state, start)
}

// FuzzParseStat checks the reaper's reading of /proc/<pid>/stat: whatever
// the command name holds (a process names itself: spaces, parentheses,
// newlines, digits), the state and start time come back as written; and
// arbitrary bytes never panic the parser and are rejected with an error
// saying what is wrong.
func FuzzParseStat(f *testing.F) {
	f.Add("sleep", byte('Z'), uint64(123456), []byte(statLine("sleep", 'S', 99)))
	f.Add("a) Z 1 2 (b", byte('S'), uint64(0), []byte("1 (a) Z 1 2 3"))
	f.Add(") ) )", byte('R'), uint64(1<<64-1), []byte("1 (x) Z"))
	f.Add("new\nline", byte('D'), uint64(7), []byte(""))
	f.Add("", byte('I'), uint64(42), []byte(")"+statLine("", 'S', 1)))
	f.Add("tab\tand 0 1 2 3", byte('t'), uint64(18446744073709551615), []byte(statLine("x", 'S', 1)[:60]))
	f.Fuzz(func(t *testing.T, comm string, state byte, start uint64, raw []byte) {
		if _, _, err := parseStat(raw); err != nil && err.Error() == "" {
			t.Fatal("an empty error")
		}
		// The kernel's state letters are never white space nor ')'.
		if state <= ' ' || state == ')' || state >= 0x7f {
			return
		}
		line := statLine(comm, state, start)
		gotState, gotStart, err := parseStat([]byte(line))
		if err != nil || gotState != state || gotStart != start {
			t.Fatalf("%q: got %q, %d, %v; want %q, %d", line, gotState, gotStart, err, state, start)
		}
	})
}

// FuzzParseChildren checks a children file's parse keeps exactly the
// positive pids, in order.
func FuzzParseChildren(f *testing.F) {
	f.Add([]byte("123 456 789 "))
	f.Add([]byte(""))
	f.Add([]byte("0 -1 +2 4194304 99999999999999999999 1e3 0x10 12\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pids := parseChildren(data)
		var want []int
		for _, field := range bytes.Fields(data) {
			if n, err := strconv.ParseInt(string(field), 10, 64); err == nil && n > 0 && int64(int(n)) == n {
				want = append(want, int(n))
			}
		}
		if fmt.Sprint(pids) != fmt.Sprint(want) {
			t.Fatalf("%q: got %v, want %v", data, pids, want)
		}
	})
}
