package lifecycle

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// maxPID is the kernel's PID_MAX_LIMIT: no process id is larger.
const maxPID = 1 << 22

// parsePID reads a pid file's content: a positive process id, optionally
// surrounded by white space (dockerd ends it with nothing, the agent with
// a newline). Anything else is an error quoting what was found.
func parsePID(b []byte) (int, error) {
	s := string(bytes.TrimSpace(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 || pid > maxPID || strings.HasPrefix(s, "+") {
		if len(s) > 32 {
			s = s[:32] + "…"
		}
		return 0, fmt.Errorf("%q is not a process id", s)
	}
	return pid, nil
}

// readPIDFile returns the process id in the pid file at path. A file that
// does not exist is an error matching fs.ErrNotExist.
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := parsePID(b)
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// writePIDFile writes pid to path atomically (a temporary file renamed
// over it), so a reader never sees half a number.
func writePIDFile(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// removePIDFileOf removes the pid file at path when it names pid, and
// leaves it alone when it names another process (a newer daemon's).
func removePIDFileOf(path string, pid int) {
	if got, err := readPIDFile(path); err == nil && got == pid {
		os.Remove(path)
	}
}

// splitCmdline splits /proc/PID/cmdline into its arguments.
func splitCmdline(b []byte) []string {
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// hasArgs reports whether args, after the program name, hold want as
// consecutive arguments.
func hasArgs(args, want []string) bool {
	if len(args) == 0 || len(want) == 0 {
		return false
	}
	rest := args[1:]
	for i := range rest {
		if len(rest)-i >= len(want) && slices.Equal(rest[i:i+len(want)], want) {
			return true
		}
	}
	return false
}
