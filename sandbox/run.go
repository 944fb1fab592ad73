package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
)

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
func (r *activeRun) terminate(grace time.Duration, after afterFunc) {
	if grace <= 0 {
		r.kill(errStopped)
		return
	}
	r.termOnce.Do(func() { close(r.termCh) })
	after(grace, func() { r.kill(errStopped) })
}

// kill asks for the workload to be killed.
func (r *activeRun) kill(why error) {
	r.killOnce.Do(func() {
		r.killWhy = why
		close(r.killCh)
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

// processIO is where a process's input comes from and its output goes.
type processIO struct {
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
// With p.TTY the process runs on a real pseudo-terminal (made by the
// sandbox's init in the sandbox's devpts; for a sandbox an earlier agent
// made, by the runtime, through its console socket) of size eio.Size,
// resized at once to each size on eio.Resize; the terminal's echo and all output come as stdout. Without
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
// reason on stderr and exit code 127 (started by the sandbox's init;
// through the runtime, for a sandbox an earlier agent made: 255 under
// runc, 1 or 255 under crun).
func (m *Manager) Exec(ctx context.Context, id string, p Process, eio ExecIO, out func(Output) error) (exitCode int, err error) {
	return m.runProcess(ctx, id, p, processIO{ExecIO: eio, out: out})
}

// runProcess starts a workload and follows it to its end.
func (m *Manager) runProcess(ctx context.Context, id string, p Process, streams processIO) (int, error) {
	if err := checkProcess(p); err != nil {
		return -1, err
	}
	if err := m.backend.CheckProcess(p); err != nil {
		return -1, err
	}
	if streams.out == nil {
		streams.out = discardOutput
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return -1, fmt.Errorf("run in sandbox %q: %w", id, errClosed)
	}
	sb, err := m.lookupLocked(id)
	if err != nil {
		m.mu.Unlock()
		return -1, err
	}
	run, err := m.beginRunLocked(sb, p)
	if err != nil {
		m.mu.Unlock()
		return -1, err
	}
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()
	return m.runWorkload(ctx, sb, run, p, streams)
}

// beginRunLocked claims a ready sandbox for a workload; m.mu is held.
func (m *Manager) beginRunLocked(sb *sandbox, p Process) (*activeRun, error) {
	switch sb.rec.State {
	case StateReady:
		if sb.checkpointing {
			return nil, Errorf(ErrConflict, "sandbox %q is being checkpointed; run again when it is done", sb.id)
		}
	case StateRunning:
		return nil, Errorf(ErrConflict, "sandbox %q is running another workload", sb.id)
	default:
		return nil, Errorf(ErrConflict, "sandbox %q is %s; a run needs it ready", sb.id, sb.rec.State)
	}
	run := newActiveRun(p.Cmd, m.now())
	sb.run = run
	sb.rec.Run = &runRecord{Cmd: runSummary(p.Cmd), StartedAt: run.started}
	m.transitionLocked(sb, StateRunning, nil)
	return run, nil
}

// runWorkload runs p as the workload run and records its end.
func (m *Manager) runWorkload(ctx context.Context, sb *sandbox, run *activeRun, p Process, streams processIO) (int, error) {
	if err := m.persist(sb); err != nil {
		// Not started: a run the record does not know of could not be
		// told apart from the sandbox's own processes after a restart.
		err = fmt.Errorf("run in sandbox %q: its record: %w", sb.id, err)
		m.endRun(sb, run, nil, err)
		return -1, err
	}
	m.mu.Lock()
	spec := sb.rec.Spec
	m.mu.Unlock()

	proc, err := m.backend.StartProcess(ctx, sb.id, spec, p, streams.ExecIO)
	if err != nil {
		err = fmt.Errorf("run in sandbox %q: %w", sb.id, err)
		m.endRun(sb, run, nil, err)
		return -1, err
	}
	code, killedBy, err := m.pumpOutput(ctx, proc, run, p, streams)
	if err != nil {
		err = fmt.Errorf("run in sandbox %q: %w", sb.id, err)
		m.endRun(sb, run, nil, err)
		return -1, err
	}
	m.endRun(sb, run, &code, nil)
	switch {
	case killedBy == nil, errors.Is(killedBy, errTimeout), errors.Is(killedBy, errStopped), errors.Is(killedBy, ErrManagerClosed):
		return code, nil
	default: // the client went away, or out failed
		return code, fmt.Errorf("run in sandbox %q: %w", sb.id, killedBy)
	}
}

// endRun records the end of a workload: its exit code, or the error that
// kept it from running, and returns the sandbox to ready.
func (m *Manager) endRun(sb *sandbox, run *activeRun, code *int, runErr error) {
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
		m.transitionLocked(sb, StateReady, attrs, ActionIdle)
	}
	close(run.done)
	m.mu.Unlock()
	m.persistLogged(sb)
	m.metrics.runSeconds.Observe(now.Sub(run.started).Seconds())
	m.worked()
}
