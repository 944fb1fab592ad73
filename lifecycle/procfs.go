package lifecycle

import (
	"bytes"
	"errors"
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

// errZombie is parseProcState's answer for a process that has ended and
// not been reaped yet.
var errZombie = errors.New("exited (a zombie)")

// parseProcState reads the state letter of /proc/PID/stat ("R", "S",
// "Z"...). The command name in parentheses may hold anything, spaces and
// parentheses included, so the state is found after the last ')'.
func parseProcState(b []byte) (byte, error) {
	end := bytes.LastIndexByte(b, ')')
	if bytes.IndexByte(b, '(') < 0 || end < 0 || end+2 >= len(b) || b[end+1] != ' ' {
		return 0, errors.New("malformed /proc stat line")
	}
	state := b[end+2]
	if state < 'A' || state > 'z' || (end+3 < len(b) && b[end+3] != ' ' && b[end+3] != '\n') {
		return 0, errors.New("malformed /proc stat line")
	}
	if state == 'Z' || state == 'X' {
		return state, errZombie
	}
	return state, nil
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
