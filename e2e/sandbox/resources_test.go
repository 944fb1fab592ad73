package sandbox

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// agentResources is what an agent holds at one moment, read from outside
// it: the figures a churn must leave where it found them.
type agentResources struct {
	Goroutines int // go_goroutines on its /metrics
	FDs        int // entries of /proc/PID/fd
	Threads    int // entries of /proc/PID/task
	Mounts     int // mount points under the agent's directory
	Loops      int // loop devices backed by a file under the agent's directory
	Cgroups    int // sandbox cgroups named with the test's prefix
	Zombies    int // the agent's children in state Z
}

func (r agentResources) String() string {
	return fmt.Sprintf("goroutines %d, fds %d, threads %d, mounts %d, loop devices %d, sandbox cgroups %d, zombies %d",
		r.Goroutines, r.FDs, r.Threads, r.Mounts, r.Loops, r.Cgroups, r.Zombies)
}

// resources reads what the agent holds now; prefix names the sandboxes
// whose cgroups count. The request for /metrics comes on a connection of
// its own, closed after, so the figure holds no idle connection of ours.
func (a *agentProc) resources(prefix string) (agentResources, error) {
	var r agentResources
	pid := a.PID()
	n, err := a.metric("go_goroutines")
	if err != nil {
		return r, err
	}
	r.Goroutines = int(n)
	if r.FDs, err = countDir(fmt.Sprintf("/proc/%d/fd", pid)); err != nil {
		return r, err
	}
	if r.Threads, err = countDir(fmt.Sprintf("/proc/%d/task", pid)); err != nil {
		return r, err
	}
	if r.Mounts, err = mountsUnder(a.Dir); err != nil {
		return r, err
	}
	r.Loops = loopsUnder(a.Dir)
	r.Cgroups = a.sandboxCgroups(prefix)
	r.Zombies = len(zombieChildren(pid))
	return r, nil
}

// metric reads one unlabelled sample from the agent's /metrics.
func (a *agentProc) metric(name string) (float64, error) {
	tr := agenttest.UnixTransport(a.Socket())
	tr.DisableKeepAlives = true
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: waitTimeout}).Get("http://agent/metrics")
	if err != nil {
		return 0, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("GET /metrics: %w", err)
	}
	return 0, fmt.Errorf("the agent's /metrics has no %s (is the Go collector registered?)", name)
}

func countDir(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	return len(entries), err
}

// mountsUnder counts the mount points below dir in this mount namespace,
// the agent's.
func mountsUnder(dir string) (int, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			n++
		}
	}
	return n, nil
}

// loopsUnder counts the loop devices whose backing file is below dir
// (loop devices are the machine's: other tests' are not counted).
func loopsUnder(dir string) int {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	n := 0
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(string(bytes.TrimSpace(b)), dir+"/") {
			n++
		}
	}
	return n
}

// sandboxCgroups counts the cgroups of the agent's sandboxes whose id
// starts with prefix, under its parent cgroup in every hierarchy.
func (a *agentProc) sandboxCgroups(prefix string) int {
	n := 0
	for parent := range parentCgroups(a.cgroupParent()) {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
				n++
			}
		}
	}
	return n
}

// zombieChildren lists the children of pid that are zombies: exited, and
// never waited for.
func zombieChildren(pid int) []int {
	var out []int
	for _, p := range allPids() {
		state, ppid, err := procState(p)
		if err == nil && ppid == pid && state == 'Z' {
			out = append(out, p)
		}
	}
	return out
}

// procState reads a process's state letter and parent from /proc/PID/stat.
func procState(pid int) (state byte, ppid int, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0][0], ppid, err
}

// memory reads the agent's resident set (VmRSS) and its peak (VmHWM), in
// bytes.
func (a *agentProc) memory() (rss, peak int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.PID()))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || key != "VmRSS" && key != "VmHWM" {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %w", a.PID(), line, err)
		}
		if key == "VmRSS" {
			rss = kb << 10
		} else {
			peak = kb << 10
		}
	}
	return rss, peak, nil
}

// anonMemory is the agent's anonymous resident memory (RssAnon): its heap,
// stacks and runtime, without the pages of its binary, which stay
// resident once a code path has run.
func (a *agentProc) anonMemory() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.PID()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if val, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no RssAnon", a.PID())
}

// waitResources polls the agent's resources until ok accepts them, and
// returns the last read; false when timeout passed first.
func (a *agentProc) waitResources(t testing.TB, prefix string, timeout time.Duration, ok func(agentResources) bool) (agentResources, bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r, err := a.resources(prefix)
		if err != nil {
			t.Fatal(err)
		}
		if ok(r) {
			return r, true
		}
		if time.Now().After(deadline) {
			return r, false
		}
		time.Sleep(100 * time.Millisecond) // polling: teardown is asynchronous
	}
}

// percentiles sorts ds and returns their p50 and p99.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return at(0.50), at(0.99)
}
