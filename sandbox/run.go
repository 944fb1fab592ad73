package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// outBufSize is the read size of each output stream: large reads keep
	// the per-call overhead small at high throughput.
	outBufSize = 256 << 10
	// drainIdle is how long output is still read after the process exited
	// when nothing more arrives: a background child that kept the pipe
	// open must not hold the run forever.
	drainIdle = 250 * time.Millisecond
	// burstMin, burstGap and burstWait coalesce a stream of writes: a
	// read of at least burstMin bytes that comes within burstGap of the
	// one before is part of a stream, and the pump lets the pipe fill for
	// burstWait before taking the rest in one read. Each write to a pipe
	// the agent waits on costs a wake-up on both sides; a process writing
	// 8 KiB at a time otherwise tops out near 300 MB/s however fast it
	// is (over 700 with this). Small output (a prompt, a keystroke's
	// echo) and output after a pause are sent at once.
	burstMin  = 4 << 10
	burstGap  = time.Millisecond
	burstWait = 200 * time.Microsecond
)

// outBufs recycles the output read buffers.
var outBufs = sync.Pool{New: func() any {
	b := make([]byte, outBufSize)
	return &b
}}

// readAvailable reads what rc's file holds now into p, without waiting.
func readAvailable(rc syscall.RawConn, p []byte) int {
	n := 0
	_ = rc.Read(func(fd uintptr) bool {
		for n < len(p) {
			k, err := unix.Read(int(fd), p[n:])
			if k <= 0 || err != nil {
				break
			}
			n += k
		}
		return true // done, whether or not there was anything
	})
	return n
}

// errTimeout is why a run past its Timeout is killed.
var errTimeout = errors.New("timeout")

// activeRun is the workload in progress in a sandbox.
type activeRun struct {
	cmd     []string
	started time.Time

	termOnce, killOnce sync.Once
	termCh             chan struct{} // closed: send SIGTERM (a stop)
	killCh             chan struct{} // closed: kill it; killWhy says why
	killWhy            error
	done               chan struct{} // closed once the run has ended and been recorded
}

func newActiveRun(cmd []string, started time.Time) *activeRun {
	return &activeRun{
		cmd:     cmd,
		started: started,
		termCh:  make(chan struct{}),
		killCh:  make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// terminate asks the workload to end (SIGTERM) and kills it after grace.
func (ar *activeRun) terminate(grace time.Duration, af afterFunc) {
	if grace <= 0 {
		ar.kill(errStopped)
		return
	}
	ar.termOnce.Do(func() { close(ar.termCh) })
	af(grace, func() { ar.kill(errStopped) })
}

// kill asks for the workload to be killed.
func (ar *activeRun) kill(why error) {
	ar.killOnce.Do(func() {
		ar.killWhy = why
		close(ar.killCh)
	})
}

var errStopped = errors.New("the sandbox is being stopped")

// ExecIO is what an interactive exec reads besides its output callback.
type ExecIO struct {
	// Stdin is the process's input. nil: none, the process sees its end at
	// once. Its end (EOF, or any error from Read) is passed on: without a
	// terminal the process's stdin is closed; with one the terminal's EOF
	// character (VEOF, ^D) is written, twice if a line was left unfinished,
	// which ends a read in canonical mode. Exec does not wait for a Read
	// in progress: once Exec returned, the caller should make Stdin return
	// (close its pipe, say); what it reads from then on is dropped.
	Stdin io.Reader
	// Resize (with Process.TTY): each size received is applied to the
	// terminal at once. nil: none. Closing it is fine; sizes sent without
	// a terminal are dropped. It is read only until Exec returns.
	Resize <-chan TTYSize
	// Size (with Process.TTY): the terminal's size at start. nil, or a
	// zero width or height: the runtime's default.
	Size *TTYSize
}

// TTYSize is a terminal's size in characters.
type TTYSize struct{ Width, Height uint16 }

// procIO is where a process's input comes from and its output goes.
type procIO struct {
	ExecIO
	out func(Output) error // called sequentially, in order
}

// Run runs a workload in a ready sandbox and returns its exit code: an
// Exec without input (the process's stdin is at its end at once).
func (m *Manager) Run(ctx context.Context, id string, p Process, out func(Output) error) (exitCode int, err error) {
	return m.Exec(ctx, id, p, ExecIO{}, out)
}

// Exec runs a workload in a ready sandbox, with the input eio gives it,
// and returns its exit code.
//
// The sandbox goes to running (event running) and back to ready when the
// process ends (event idle, attribute exit_code); LastExitCode and
// LastExitedAt record it. A sandbox that is not ready gives ErrConflict
// (running: another workload runs): one workload at a time.
//
// With p.TTY the process runs on a real pseudo-terminal (the runtime's
// console socket) of size eio.Size, resized at once to each size on
// eio.Resize; the terminal's echo and all output come as stdout. Without
// it stdout and stderr come apart. See ExecIO for stdin.
//
// out is called sequentially, in order, as output is produced. Output.Data
// is only valid during the call. While out blocks, the process is held up
// when it writes (back-pressure): no byte is dropped or reordered, and no
// more than a pipe's worth is buffered. If out returns an error the process
// is killed and Exec returns that error.
//
// When ctx ends (the client went away) the process is killed (SIGKILL,
// with its descendants) and Exec returns exit code 137 and ctx's error;
// the sandbox is ready again. Past p.Timeout the process is killed the
// same way and Exec returns 137 with a nil error. A stop of the sandbox
// sends the process SIGTERM, then SIGKILL. Output is read until the
// process has exited and its pipes are closed, or until nothing arrived
// for 250 ms after its exit (a background child that keeps them open).
//
// A process that cannot be started (no such program, say) ends with the
// runtime's message on stderr and exit code 255 (runc) or 1/255 (crun).
func (m *Manager) Exec(ctx context.Context, id string, p Process, eio ExecIO, out func(Output) error) (exitCode int, err error) {
	return m.execute(ctx, id, p, procIO{ExecIO: eio, out: out})
}

// execute starts a workload and drives it to its end.
func (m *Manager) execute(ctx context.Context, id string, p Process, pio procIO) (int, error) {
	if err := checkProcess(p); err != nil {
		return -1, err
	}
	if err := m.be.CheckProcess(p); err != nil {
		return -1, err
	}
	if pio.out == nil {
		pio.out = discardOutput
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return -1, fmt.Errorf("run in sandbox %q: %w", id, errClosed)
	}
	sb, err := m.lookup(id)
	if err != nil {
		m.mu.Unlock()
		return -1, err
	}
	ar, err := m.beginRunLocked(sb, p)
	if err != nil {
		m.mu.Unlock()
		return -1, err
	}
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()
	return m.runWorkload(ctx, sb, ar, p, pio)
}

// beginRunLocked claims a ready sandbox for a workload; m.mu is held.
func (m *Manager) beginRunLocked(sb *sandbox, p Process) (*activeRun, error) {
	switch sb.rec.State {
	case StateReady:
		if sb.checkpointing {
			return nil, fmt.Errorf("sandbox %q is being checkpointed; run again when it is done: %w", sb.id, ErrConflict)
		}
	case StateRunning:
		return nil, fmt.Errorf("sandbox %q is running another workload: %w", sb.id, ErrConflict)
	default:
		return nil, fmt.Errorf("sandbox %q is %s; a run needs it ready: %w", sb.id, sb.rec.State, ErrConflict)
	}
	ar := newActiveRun(p.Cmd, m.now())
	sb.run = ar
	sb.rec.Run = &runRecord{Cmd: p.Cmd, StartedAt: ar.started}
	m.transition(sb, StateRunning, nil)
	return ar, nil
}

// runWorkload runs p as the workload ar and records its end.
func (m *Manager) runWorkload(ctx context.Context, sb *sandbox, ar *activeRun, p Process, pio procIO) (int, error) {
	m.persistLogged(sb)
	m.mu.Lock()
	spec := sb.rec.Spec
	m.mu.Unlock()

	exe, err := m.be.Exec(ctx, sb.id, spec, p, pio.ExecIO)
	if err != nil {
		err = fmt.Errorf("run in sandbox %q: %w", sb.id, err)
		m.endRun(sb, ar, nil, err)
		return -1, err
	}
	code, killedBy, err := m.drive(ctx, exe, ar, p, pio)
	if err != nil {
		err = fmt.Errorf("run in sandbox %q: %w", sb.id, err)
		m.endRun(sb, ar, nil, err)
		return -1, err
	}
	m.endRun(sb, ar, &code, nil)
	switch {
	case killedBy == nil, errors.Is(killedBy, errTimeout), errors.Is(killedBy, errStopped), errors.Is(killedBy, ErrManagerClosed):
		return code, nil
	default: // the client went away, or out failed
		return code, fmt.Errorf("run in sandbox %q: %w", sb.id, killedBy)
	}
}

// drive pumps a started process's output to pio.out and enforces its
// timeout, ctx, and the stop/kill requests on ar. killedBy is why the
// manager killed it, if it did.
func (m *Manager) drive(ctx context.Context, exe execution, ar *activeRun, p Process, pio procIO) (code int, killedBy error, err error) {
	defer exe.Close()
	var (
		outMu    sync.Mutex
		outErr   error
		aborted  = make(chan struct{})
		abortOne sync.Once
		exited   atomic.Bool
		pumps    sync.WaitGroup
	)
	pump := func(f *os.File, stream string) {
		defer pumps.Done()
		bufp := outBufs.Get().(*[]byte)
		defer outBufs.Put(bufp)
		buf := *bufp
		rc, rcErr := f.SyscallConn()
		var last time.Time
		for {
			n, rerr := f.Read(buf)
			if n >= burstMin && n < len(buf) && rerr == nil {
				now := time.Now()
				if now.Sub(last) < burstGap && rcErr == nil {
					time.Sleep(burstWait)
					n += readAvailable(rc, buf[n:])
				}
				last = now
			}
			if n > 0 {
				outMu.Lock()
				if outErr == nil {
					if oerr := pio.out(Output{Stream: stream, Data: buf[:n]}); oerr != nil {
						outErr = oerr
						abortOne.Do(func() { close(aborted) })
					}
				}
				outMu.Unlock()
				if exited.Load() {
					_ = f.SetReadDeadline(time.Now().Add(drainIdle))
				}
			}
			if rerr != nil {
				if errors.Is(rerr, os.ErrDeadlineExceeded) {
					m.log.Warn("output still open after the process exited; stopped reading it", "stream", stream, "cmd", p.Cmd)
				}
				return
			}
		}
	}
	files := []*os.File{exe.Stdout()}
	pumps.Add(1)
	go pump(exe.Stdout(), StreamStdout)
	if f := exe.Stderr(); f != nil {
		files = append(files, f)
		pumps.Add(1)
		go pump(f, StreamStderr)
	}

	type result struct {
		code int
		err  error
	}
	waited := make(chan result, 1)
	go func() {
		c, err := exe.Wait()
		waited <- result{c, err}
	}()
	var timeout chan struct{}
	if p.Timeout > 0 {
		timeout = make(chan struct{})
		stop := m.afterFunc(p.Timeout, func() { close(timeout) })
		defer stop()
	}
	kill := func(why error) {
		if killedBy != nil {
			return
		}
		killedBy = why
		if err := exe.Signal(unix.SIGKILL, true); err != nil {
			m.log.Warn("kill workload", "cmd", p.Cmd, "err", err)
		}
	}
	done, term, killc, resize := ctx.Done(), ar.termCh, ar.killCh, pio.Resize
	var res result
wait:
	for {
		select {
		case res = <-waited:
			break wait
		case <-done:
			kill(fmt.Errorf("the client went away: %w", context.Cause(ctx)))
			done = nil
		case <-timeout:
			kill(fmt.Errorf("%w after %s", errTimeout, p.Timeout))
			timeout = nil
		case <-aborted:
			kill(fmt.Errorf("output: %w", outErr))
			aborted = nil
		case <-term:
			if err := exe.Signal(unix.SIGTERM, false); err != nil {
				m.log.Warn("terminate workload", "cmd", p.Cmd, "err", err)
			}
			term = nil
		case <-killc:
			kill(ar.killWhy)
			killc = nil
		case sz, ok := <-resize:
			switch {
			case !ok:
				resize = nil
			case !p.TTY: // no terminal to resize
			default:
				if err := exe.Resize(sz.Width, sz.Height); err != nil {
					m.log.Warn("resize terminal", "cmd", p.Cmd, "err", err)
				}
			}
		}
	}
	exited.Store(true)
	for _, f := range files {
		_ = f.SetReadDeadline(time.Now().Add(drainIdle))
	}
	pumps.Wait()
	if res.err != nil {
		return -1, killedBy, res.err
	}
	if killedBy != nil && !errors.Is(killedBy, errStopped) && !errors.Is(killedBy, ErrManagerClosed) {
		res.code = ExitKilled
	}
	return res.code, killedBy, nil
}

// endRun records the end of a workload: its exit code, or the error that
// kept it from running, and returns the sandbox to ready.
func (m *Manager) endRun(sb *sandbox, ar *activeRun, code *int, runErr error) {
	m.mu.Lock()
	now := m.now()
	sb.run = nil
	sb.rec.Run = nil
	var attrs map[string]string
	if code != nil {
		sb.rec.LastExitCode = code
		sb.rec.LastExitedAt = now
		if sb.rec.State == StateRunning {
			sb.rec.Error = "" // a note on an earlier lost run; a failure stays
		}
		attrs = map[string]string{"exit_code": strconv.Itoa(*code)}
	} else {
		attrs = map[string]string{"exit_code": strconv.Itoa(ExitLost), "error": runErr.Error()}
	}
	if sb.rec.State == StateRunning {
		m.transition(sb, StateReady, attrs, ActionIdle)
	}
	close(ar.done)
	m.mu.Unlock()
	m.persistLogged(sb)
	m.metrics.runSeconds.Observe(now.Sub(ar.started).Seconds())
}
