package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"golang.org/x/sys/unix"
)

// fakeBackend is a Backend without containers. Its processes are scripted
// by their Cmd[0]:
//
//	echo ARGS...        prints ARGS to stdout, exits 0
//	fail CODE MSG       prints MSG to stderr, exits CODE
//	block               waits for a signal; exits 128+signal
//	stubborn            ignores SIGTERM; exits 137 on SIGKILL
//	flood N             writes N bytes (a counter pattern) to stdout
//	burst N             writes N bytes (a counter pattern) to stdout and to
//	                    stderr, and exits; with burstGate set, it writes
//	                    the first byte of stdout, then waits for the gate
//	                    to close before the rest
//	holder              writes "x" to stdout and exits, leaving stdout open
//	                    (until Close) to a background writer of "y"s
//	silent              writes "x" to stdout and exits, leaving stdout open
//	                    (until Close) to nobody that writes
//	cat                 copies its stdin to stdout until its end, exits 0
//	nope                cannot start
type fakeBackend struct {
	mu          sync.Mutex
	validateErr error
	startErr    error
	startGate   chan struct{} // when set, Start waits for it to close
	alive       map[string]bool
	boxes       map[string]chan struct{} // the inits: closed when they exit
	stops       []string
	destroys    []string
	killed      []string // KillWorkloads calls
	procs       []*fakeProcess
	startedFrom map[string]string // Start's from, by id
	idmaps      map[string]IDMap  // Start's idmap, by id
	nextIDMaps  map[string]IDMap  // Start's NextIDMap, by id
	// checkpointErr fails Checkpoint; checkpointGate, when set, holds it
	// until closed.
	checkpointErr  error
	checkpointGate chan struct{}
	burstGate      chan struct{}
}

var _ Backend = (*fakeBackend)(nil)

func newFakeBackend() *fakeBackend {
	return &fakeBackend{alive: map[string]bool{}, boxes: map[string]chan struct{}{}, startedFrom: map[string]string{}, idmaps: map[string]IDMap{}, nextIDMaps: map[string]IDMap{}}
}

func (f *fakeBackend) Validate(s Spec) error {
	if s.Kernel != "" {
		return InvalidField("kernel", "not supported by the container backend")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.validateErr
}

func (f *fakeBackend) Start(ctx context.Context, r StartRequest) (<-chan struct{}, error) {
	id := r.ID
	f.mu.Lock()
	f.idmaps[id] = r.IDMap
	f.nextIDMaps[id] = r.NextIDMap
	gate, err := f.startGate, f.startErr
	f.startedFrom[id] = r.From
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{})
	f.boxes[id] = ch
	f.alive[id] = true
	return ch, nil
}

func (f *fakeBackend) Adopt(ctx context.Context, id string) (<-chan struct{}, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.alive[id] {
		return nil, false, nil
	}
	ch := make(chan struct{})
	f.boxes[id] = ch
	return ch, true, nil
}

// killInit makes a sandbox's init exit, as if killed from outside.
func (f *fakeBackend) killInit(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.boxes[id]; ok {
		close(ch)
		delete(f.boxes, id)
	}
	f.alive[id] = false
}

func (f *fakeBackend) KillWorkloads(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.killed = append(f.killed, id)
	return nil
}

func (f *fakeBackend) Stop(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops = append(f.stops, id)
	if ch, ok := f.boxes[id]; ok {
		close(ch)
		delete(f.boxes, id)
	}
	f.alive[id] = false
	return nil
}

func (f *fakeBackend) Destroy(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroys = append(f.destroys, id)
	return nil
}

func (f *fakeBackend) Close() error { return nil }

// Checkpoint writes the sandbox's id into dir/layer/from, standing in for
// its files.
func (f *fakeBackend) Checkpoint(ctx context.Context, id, dir string) error {
	f.mu.Lock()
	gate, err := f.checkpointGate, f.checkpointErr
	alive := f.alive[id]
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if err != nil {
		return err
	}
	if !alive {
		return fmt.Errorf("checkpoint %s: no container", id)
	}
	if err := os.Mkdir(dir+"/layer", 0o700); err != nil {
		return err
	}
	return os.WriteFile(dir+"/layer/from", []byte(id), 0o600)
}

func (f *fakeBackend) DeleteSnapshot(ctx context.Context, dir string) error {
	return os.RemoveAll(dir)
}

// OpenFiles: the fake has no files to open (filesBackend, in
// files_test.go, stands in for a backend that has).
func (f *fakeBackend) OpenFiles(id string, r FilesRequest) (FileTree, error) {
	return nil, Errorf(ErrUnavailable, "the fake backend has no files of sandbox %q", id)
}

// Stats: the fake has no cgroups to read (statsBackend, in stats_test.go,
// answers scripted stats).
func (f *fakeBackend) Stats(ctx context.Context, id string) (Stats, error) {
	return Stats{}, Errorf(ErrUnavailable, "the fake backend has no cgroup of sandbox %q", id)
}

// ImageConfig: the fake keeps no image configs (imageBackend, in
// imageconfig_test.go, does), as for a sandbox whose files are not made.
func (f *fakeBackend) ImageConfig(id string) (*ImageConfig, error) { return nil, nil }

func (f *fakeBackend) CheckProcess(p Process) error { return nil }

func (f *fakeBackend) StartProcess(ctx context.Context, id string, s Spec, p Process, stdio ExecIO) (RunningProcess, error) {
	if p.Cmd[0] == "nope" {
		return nil, fmt.Errorf("exec: %q: executable file not found", p.Cmd[0])
	}
	e, err := newFakeProcess(p)
	if err != nil {
		return nil, err
	}
	e.stdin = stdio.Stdin
	f.mu.Lock()
	f.procs = append(f.procs, e)
	e.gate = f.burstGate
	e.pid = len(f.procs) + 1
	f.mu.Unlock()
	go e.run(p)
	return e, nil
}

// fakeProcess is a scripted process writing into real pipes.
type fakeProcess struct {
	stdoutR, stdoutW *os.File
	stderrR, stderrW *os.File
	sigs             chan unix.Signal
	done             chan struct{}
	gate             chan struct{} // see burst
	code             int
	stdin            io.Reader // nil: none
	pid              int

	mu       sync.Mutex
	received []unix.Signal
}

func newFakeProcess(p Process) (*fakeProcess, error) {
	e := &fakeProcess{sigs: make(chan unix.Signal, 8), done: make(chan struct{})}
	var err error
	if e.stdoutR, e.stdoutW, err = os.Pipe(); err != nil {
		return nil, err
	}
	if e.stderrR, e.stderrW, err = os.Pipe(); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *fakeProcess) run(p Process) {
	defer close(e.done)
	if p.Cmd[0] == "holder" || p.Cmd[0] == "silent" {
		fmt.Fprint(e.stdoutW, "x")
		e.stderrW.Close()
		if p.Cmd[0] == "holder" {
			go func() {
				for {
					if _, err := e.stdoutW.Write([]byte("y")); err != nil {
						return // closed
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
		}
		return // stdoutW stays open until Close
	}
	defer e.stdoutW.Close()
	defer e.stderrW.Close()
	switch p.Cmd[0] {
	case "burst":
		n, _ := strconv.Atoi(p.Cmd[1])
		data := floodPattern(n)
		if e.gate != nil {
			_, _ = e.stdoutW.Write(data[:1])
			<-e.gate
			_, _ = e.stdoutW.Write(data[1:])
		} else {
			_, _ = e.stdoutW.Write(data)
		}
		_, _ = e.stderrW.Write(data)
	case "echo":
		fmt.Fprintln(e.stdoutW, p.Cmd[1:])
	case "cat":
		if e.stdin != nil {
			_, _ = io.Copy(e.stdoutW, e.stdin)
		}
	case "fail":
		e.code, _ = strconv.Atoi(p.Cmd[1])
		fmt.Fprint(e.stderrW, p.Cmd[2])
	case "block":
		sig := <-e.sigs
		e.code = 128 + int(sig)
	case "stubborn":
		for sig := range e.sigs {
			if sig == unix.SIGKILL {
				e.code = 137
				return
			}
		}
	case "flood":
		n, _ := strconv.Atoi(p.Cmd[1])
		buf := floodPattern(n)
		for len(buf) > 0 {
			k := min(len(buf), 7919) // odd sizes, to mix chunk boundaries
			if _, err := e.stdoutW.Write(buf[:k]); err != nil {
				e.code = 141
				return
			}
			buf = buf[k:]
			select {
			case sig := <-e.sigs:
				e.code = 128 + int(sig)
				return
			default:
			}
		}
	default:
		e.code = 127
	}
}

// floodPattern is n bytes whose order can be checked.
func floodPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func (e *fakeProcess) Stdout() *os.File { return e.stdoutR }
func (e *fakeProcess) Pid() int         { return e.pid }
func (e *fakeProcess) Stderr() *os.File { return e.stderrR }
func (e *fakeProcess) Signal(sig unix.Signal, tree bool) error {
	e.mu.Lock()
	e.received = append(e.received, sig)
	e.mu.Unlock()
	select {
	case e.sigs <- sig:
	default:
	}
	return nil
}
func (e *fakeProcess) Resize(w, h uint16) error { return errors.New("no terminal") }
func (e *fakeProcess) Wait() (int, error) {
	<-e.done
	return e.code, nil
}
func (e *fakeProcess) Close() error {
	e.stdoutW.Close() // a holder's end
	e.stdoutR.Close()
	e.stderrR.Close()
	return nil
}

func (e *fakeProcess) signals() []unix.Signal {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.received)
}

// fakeClock is a clock and timer source the test moves by hand.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// pending counts the armed timers.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// Advance moves the clock and fires the timers that came due, each in a
// goroutine of its own as time.AfterFunc does.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	for _, t := range c.timers {
		if !t.stopped && !t.at.After(c.now) {
			t.stopped = true
			due = append(due, t)
		}
	}
	c.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
	for _, t := range due {
		go t.f()
	}
}

// process returns the i-th process started, waiting for it to be started.
func (f *fakeBackend) process(t testing.TB, i int) *fakeProcess {
	t.Helper()
	var e *fakeProcess
	sandboxtest.WaitFor(t, "a process to start", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.procs) > i {
			e = f.procs[i]
			return true
		}
		return false
	})
	return e
}
