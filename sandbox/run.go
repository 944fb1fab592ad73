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
	// holderIdle is how long a stream is still followed after the process
	// exited and everything it wrote was read, when something it left
	// behind (a background child) still holds the stream open: while that
	// one keeps writing, its output is passed on; once it is quiet this
	// long, the stream is cut and the run's end says so. It never decides
	// whether the process's own output is delivered: that is all read
	// before this wait begins.
	holderIdle = 250 * time.Millisecond
	// holderMax bounds how long a holder's output is followed at all, so
	// that one that never stops writing (`yes &`) cannot hold the run.
	holderMax = 2 * time.Second
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
// eof is true when the file is at its end: every writer closed it (or, for
// a terminal, the last process on it is gone, EIO); any other error counts
// as an end too, since nothing more can be read.
func readAvailable(rc syscall.RawConn, p []byte) (n int, eof bool) {
	err := rc.Read(func(fd uintptr) bool {
		for n < len(p) {
			k, err := unix.Read(int(fd), p[n:])
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				break
			}
			if k <= 0 || err != nil {
				eof = true
				break
			}
			n += k
		}
		return true // done, whether or not there was anything
	})
	if err != nil {
		eof = true
	}
	return n, eof
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
// sends the process SIGTERM, then SIGKILL. Everything the process wrote
// is delivered before Exec returns. When something it left behind (a
// background child) still holds a stream open after its exit, that one's
// output is followed while it keeps coming (until a 250 ms pause, 2 s at
// most), and then the stream is cut: its last Output has Truncated set.
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
	sb.rec.Run = &runRecord{Cmd: runSummary(p.Cmd), StartedAt: ar.started}
	m.transition(sb, StateRunning, nil)
	return ar, nil
}

// runWorkload runs p as the workload ar and records its end.
func (m *Manager) runWorkload(ctx context.Context, sb *sandbox, ar *activeRun, p Process, pio procIO) (int, error) {
	if err := m.persist(sb); err != nil {
		// Not started: a run the record does not know of could not be
		// told apart from the sandbox's own processes after a restart.
		err = fmt.Errorf("run in sandbox %q: its record: %w", sb.id, err)
		m.endRun(sb, ar, nil, err)
		return -1, err
	}
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
	send := func(o Output) bool {
		outMu.Lock()
		defer outMu.Unlock()
		if outErr != nil {
			return false
		}
		if oerr := pio.out(o); oerr != nil {
			outErr = oerr
			abortOne.Do(func() { close(aborted) })
			return false
		}
		return true
	}
	pump := func(f *os.File, stream string) {
		defer pumps.Done()
		bufp := outBufs.Get().(*[]byte)
		defer outBufs.Put(bufp)
		buf := *bufp
		rc, rcErr := f.SyscallConn()
		var last time.Time
		for {
			n, rerr := f.Read(buf)
			if n >= burstMin && n < len(buf) && rerr == nil && rcErr == nil {
				now := time.Now()
				if now.Sub(last) < burstGap {
					time.Sleep(burstWait)
					k, _ := readAvailable(rc, buf[n:])
					n += k
				}
				last = now
			}
			if n > 0 {
				// Once out has failed, what is read is dropped: the
				// process is being killed, and must not block on a
				// pipe nobody reads meanwhile.
				send(Output{Stream: stream, Data: buf[:n]})
			}
			if rerr == nil {
				continue
			}
			if errors.Is(rerr, os.ErrDeadlineExceeded) && exited.Load() && rcErr == nil {
				// drive woke this read: the process has exited.
				if why := drainExited(f, rc, buf, func(p []byte) bool { return send(Output{Stream: stream, Data: p}) }); why != "" {
					m.log.Warn("output cut: still open after the process exited", "stream", stream, "cmd", p.Cmd)
					send(Output{Stream: stream, Truncated: why})
				}
			}
			return // EOF: every writer closed the stream; or it failed
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
	// Wake the pumps: each reads what is left of the process's output,
	// however late it runs (drainExited).
	exited.Store(true)
	for _, f := range files {
		_ = f.SetReadDeadline(time.Now())
	}
	pumps.Wait()
	if res.err != nil {
		return -1, killedBy, res.err
	}
	if killedBy != nil && !errors.Is(killedBy, errStopped) && !errors.Is(killedBy, ErrManagerClosed) {
		res.code = ExitKilled
	}
	if killedBy == nil && outErr != nil {
		// out failed on what was left after the exit: the process ended
		// on its own (its code stands), but its output did not all go.
		killedBy = fmt.Errorf("output: %w", outErr)
	}
	return res.code, killedBy, nil
}

// drainExited reads what is left of a stream once its process has exited,
// passing it to send, and returns why the stream was cut, or "" when
// nothing was lost. The process's writes all happened before its exit was
// known, so everything it wrote is in the pipe now: that many bytes
// (FIONREAD) are read without waiting, however late this runs. Only when
// the stream is still open then (something the process left behind holds
// it) does time matter: that holder's output is followed until it is
// quiet for holderIdle (holderMax at most), and the stream is cut, and
// reported cut if the holder was writing; one that holds it silently lost
// nothing.
func drainExited(f *os.File, rc syscall.RawConn, buf []byte, send func([]byte) bool) (cut string) {
	_ = f.SetReadDeadline(time.Time{})
	until := time.Now().Add(holderMax)
	left, known := pendingBytes(rc)
	for !known || left > 0 {
		p := buf
		if known {
			p = buf[:min(len(buf), left)]
		}
		n, eof := readAvailable(rc, p)
		if n > 0 && !send(p[:n]) {
			return ""
		}
		if eof {
			return ""
		}
		left -= n
		if n < len(p) || (!known && time.Now().After(until)) {
			break // empty, and still open
		}
	}
	wrote := false // by the holder, since the exit
	for {
		deadline := time.Now().Add(holderIdle)
		if deadline.After(until) {
			deadline = until
		}
		_ = f.SetReadDeadline(deadline)
		n, err := f.Read(buf)
		if n > 0 {
			wrote = true
			if !send(buf[:n]) {
				return ""
			}
		}
		switch {
		case err == nil:
			continue
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return "" // the holder closed it too
		}
		// Quiet for holderIdle, or followed for holderMax: take what
		// is there, and cut.
		_ = f.SetReadDeadline(time.Time{})
		n, eof := readAvailable(rc, buf)
		if n > 0 {
			wrote = true
			if !send(buf[:n]) {
				return ""
			}
		}
		if eof || !wrote {
			return ""
		}
		return "the process exited and everything it wrote was delivered, but a process it left behind kept writing to the stream: stopped reading it"
	}
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
	m.worked()
}
