package lifecycle

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzParsePID checks the pid file parser never panics, quotes what it
// rejects, and accepts only process ids the kernel can give, which parse
// back to themselves as the agent writes them.
func FuzzParsePID(f *testing.F) {
	for _, s := range []string{"1234\n", "1234", " 42 \n", "1", "4194304", "4194305", "0", "-1", "+5", "12a", "", "\n",
		"99999999999999999999", "1\n2\n", "0x10", "\x00", strings.Repeat("9", 100)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, err := parsePID(b)
		if err != nil {
			if !strings.Contains(err.Error(), "is not a process id") {
				t.Fatalf("error %q does not say what is wrong", err)
			}
			return
		}
		if pid <= 0 || pid > maxPID {
			t.Fatalf("accepted %d from %q", pid, b)
		}
		if again, err := parsePID([]byte(strconv.Itoa(pid) + "\n")); err != nil || again != pid {
			t.Fatalf("round trip of %d: %d, %v", pid, again, err)
		}
	})
}

// FuzzCmdline checks that arguments joined as /proc/PID/cmdline shows
// them split back to themselves, and that hasArgs finds what they hold.
func FuzzCmdline(f *testing.F) {
	f.Add("/usr/bin/containerd\x00--config\x00/etc/c.toml\x00--address\x00/run/c.sock", "--address\x00/run/c.sock")
	f.Add("/usr/sbin/dockerd\x00--host=unix:///var/run/docker.sock", "--host=unix:///var/run/docker.sock")
	f.Add("dockerd", "dockerd")
	f.Add("", "x")
	f.Fuzz(func(t *testing.T, joined, want string) {
		if strings.Contains(joined, "\x00\x00") || strings.HasPrefix(joined, "\x00") || joined == "" {
			return // empty arguments: /proc cannot tell them apart
		}
		args := strings.Split(joined, "\x00")
		if got := splitCmdline([]byte(joined + "\x00")); !slices.Equal(got, args) {
			t.Fatalf("split %q: %q, want %q", joined, got, args)
		}
		if len(args) > 1 && !hasArgs(args, args[1:]) {
			t.Fatalf("hasArgs(%q, its own arguments) is false", args)
		}
		w := strings.Split(want, "\x00")
		found := false
		for i := 1; i+len(w) <= len(args); i++ {
			found = found || slices.Equal(args[i:i+len(w)], w)
		}
		if hasArgs(args, w) != found {
			t.Fatalf("hasArgs(%q, %q) = %v, want %v", args, w, !found, found)
		}
	})
}

// refTail is the last n lines of b the slow way: a line ends after its
// newline, and a last line without one counts.
func refTail(b []byte, n int) []byte {
	if n <= 0 || len(b) == 0 {
		return nil
	}
	starts := []int{0}
	for i, c := range b {
		if c == '\n' && i+1 < len(b) {
			starts = append(starts, i+1)
		}
	}
	if len(starts) <= n {
		return b
	}
	return b[starts[len(starts)-n]:]
}

// FuzzTail checks the log tail reader, which scans a file backwards in
// chunks, against refTail, from any offset.
func FuzzTail(f *testing.F) {
	f.Add([]byte("a\nb\nc\n"), 2, uint16(0))
	f.Add([]byte("a\nb\nc"), 1, uint16(0))
	f.Add([]byte("\n\n\n"), 2, uint16(1))
	f.Add([]byte("old 1\nold 2\nnew 1\nnew 2\n"), 10, uint16(12))
	f.Add([]byte("only line"), 3, uint16(5))
	f.Add([]byte(strings.Repeat("x", 40<<10)+"\nend\n"), 2, uint16(3))
	f.Add([]byte{}, 1, uint16(0))
	f.Add([]byte("a\n"), 0, uint16(0))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte, n int, from uint16) {
		path := filepath.Join(dir, "log")
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		file, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		off := min(int(from), len(content))
		got, end, err := tailFrom(file, int64(off), n)
		if err != nil {
			t.Fatal(err)
		}
		if want := refTail(content[off:], n); !bytes.Equal(got, want) {
			t.Fatalf("tail of %d lines from %d of %q: %q, want %q", n, off, content, got, want)
		}
		if end != int64(len(content)) {
			t.Fatalf("end %d, want %d", end, len(content))
		}
	})
}
