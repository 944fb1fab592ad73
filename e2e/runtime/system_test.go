package runtime

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// What the test reads from /proc about the machine: processes (mounts and
// loop devices are agenttest's). It only ever changes what it made itself.

// proc is a process as /proc shows it.
type proc struct {
	pid, ppid int
	comm      string
	cmdline   string
}

func (p proc) String() string { return fmt.Sprintf("%d (%s): %s", p.pid, p.comm, p.cmdline) }

// readProc reads pid's /proc entry; ok is false when it is gone or a
// zombie (it has ended; its parent has not reaped it yet).
func readProc(pid int) (p proc, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+2 >= len(s) {
		return p, false
	}
	fields := strings.Fields(s[end+2:])
	if len(fields) < 2 || fields[0] == "Z" {
		return p, false
	}
	p.pid, p.comm = pid, s[open+1:end]
	p.ppid, _ = strconv.Atoi(fields[1])
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	p.cmdline = strings.TrimSpace(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
	return p, true
}

func alive(pid int) bool {
	_, ok := readProc(pid)
	return ok
}

// processes lists the live processes.
func processes() []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			out = append(out, p)
		}
	}
	return out
}

// childrenOf maps the command names of ppid's children to their pids.
func childrenOf(ppid int) map[string]int {
	out := map[string]int{}
	for _, p := range processes() {
		if p.ppid == ppid {
			out[p.comm] = p.pid
		}
	}
	return out
}

// processesOf lists the live processes that belong to what the test
// started under dir: those whose command line names dir (the agent, the
// daemons, the shims) and those whose root is below it (containers).
func processesOf(dir string) []proc {
	var out []proc
	for _, p := range processes() {
		root, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", p.pid))
		if strings.Contains(p.cmdline, dir) || strings.HasPrefix(root, dir+"/") {
			out = append(out, p)
		}
	}
	return out
}
