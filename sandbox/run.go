package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// errTimeout is why a run past its Timeout is killed.
var errTimeout = errors.New("timeout")

// activeRun is a run in a sandbox: in progress, or ended and kept (see
// runs.go) so that its state and output can still be read.
type activeRun struct {
	id       string
	cmd      []string // as the record keeps it (runSummary)
	tty      bool
	detached bool // its output is kept and it outlives its client
	started  time.Time
	out      *outputBuffer
	stdin    *runStdin // nil: its stdin was at its end at once

	// m.mu guards these.
	listed   bool // its process started: it is listed (and not before)
	pid      int
	state    RunState
	ended    time.Time
	exitCode *int
	errText  string // why it could not start, or was lost

	termOnce, killOnce sync.Once
	termCh             chan struct{} // closed: send SIGTERM (a stop)
	killCh             chan struct{} // closed: kill it; killWhy says why
	killWhy            error
	sigs               chan signalRequest // SignalRun's, served by the pump
	pumping            chan struct{}      // closed once the pump serves no more signals
	done               chan struct{}      // closed once the run has ended and been recorded
}

func newActiveRun(id string, p Process, started time.Time, outLimit int64) *activeRun {
	return &activeRun{
		id:       id,
		cmd:      runSummary(p.Cmd),
		tty:      p.TTY,
		detached: p.DetachOnDisconnect,
		started:  started,
		out:      newOutputBuffer(outLimit),
		state:    RunRunning,
		termCh:   make(chan struct{}),
		killCh:   make(chan struct{}),
		sigs:     make(chan signalRequest),
		pumping:  make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// signalRequest is a signal for the pump to send, and where to say how
// it went.
type signalRequest struct {
	sig   unix.Signal
	reply chan error
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

// ErrStdinDetached, as the error ExecIO.Stdin ends with, says its client
// went away from a run that outlives it (Process.DetachOnDisconnect): the
// end is not passed on, so the process's stdin stays open rather than
// reaching its end (a shell on a terminal would take it as ^D and exit).
var ErrStdinDetached = errors.New("the client detached from the process's stdin")

// ExecIO is what an interactive exec reads besides its output callback.
type ExecIO struct {
	// Stdin is the process's input. nil: none, the process sees its end at
	// once. Its end (EOF, or any error from Read but ErrStdinDetached) is
	// passed on: without a terminal the process's stdin is closed; with
	// one the terminal's EOF character (VEOF, ^D) is written, twice if a
	// line was left unfinished, which ends a read in canonical mode. Exec does not wait for a Read
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
	// Started, when set, is called once the process has started, before
	// any output, with the run's info (its id, to reattach to a run that
	// detaches on disconnect).
	Started func(RunInfo)
	// Signals, when set, takes signals for the process while it runs (a
	// WebSocket's signal messages); each is sent to the process alone.
	// It is read only until Exec returns.
	Signals <-chan unix.Signal
}

// TTYSize is a terminal's size in characters.
type TTYSize struct{ Width, Height uint16 }

// processIO is where a process's input comes from and its output goes.
type processIO struct {
	ExecIO
	out func(Output) error // called sequentially, in order
}

// Run runs a workload in a ready or running sandbox and returns its exit
// code: an Exec without input (the process's stdin is at its end at once).
func (m *Manager) Run(ctx context.Context, id string, p Process, out func(Output) error) (exitCode int, err error) {
	return m.Exec(ctx, id, p, ExecIO{}, out)
}

// Exec runs a workload in a ready or running sandbox, with the input eio
// gives it, and returns its exit code. It is an attached run: it has an
// id and is listed (Runs) like a detached one (StartRun), and its output
// is kept too, but it ends when its client goes (see below).
//
// The sandbox goes to running (event running) with its first run in
// progress and back to ready when the last ends (event idle, attribute
// exit_code: the last run's); each run has events run.started and
// run.exited. LastExitCode and LastExitedAt record the last run to end.
// Past Config.MaxRuns runs in progress, or while a checkpoint captures
// the sandbox, the error is ErrConflict.
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
// more than a pipe's worth is buffered. Each byte is also kept in the
// run's bounded output (ReadRunOutput), which never holds the process up.
//
// When ctx ends (the client went away) or out returns an error, the
// client is gone: out is called no more, and the process is hung up as a
// terminal hangs up its session: SIGHUP, then SIGKILL (with its
// descendants) after Config.HangupGrace if it still runs. Exec returns
// the process's exit code (129 for a process SIGHUP ended, 137 when it
// had to be killed) and why the client went; the sandbox is ready again.
// With p.DetachOnDisconnect the process is left running instead, as a
// detached run, and Exec returns at once with ExitDetached and the
// client's error. Past p.Timeout the process is killed (SIGKILL) and Exec
// returns 137 with a nil error. A stop of the sandbox sends the process
// SIGTERM, then SIGKILL. Everything the process wrote is delivered before
// Exec returns. When something it left behind (a background child) still
// holds a stream open after its exit, that one's output is followed while
// it keeps coming (until a 250 ms pause, 2 s at most), and then the stream
// is cut: its last Output has Truncated set.
//
// A process that cannot be started (no such program, say) ends with the
// reason on stderr and exit code 127 (started by the sandbox's init;
// through the runtime, for a sandbox an earlier agent made: 255 under
// runc, 1 or 255 under crun).
func (m *Manager) Exec(ctx context.Context, id string, p Process, eio ExecIO, out func(Output) error) (exitCode int, err error) {
	run, err := m.claimRun(id, p)
	if err != nil {
		return -1, err
	}
	defer m.wg.Done()
	if out == nil {
		out = discardOutput
	}
	if p.DetachOnDisconnect {
		return m.runDetachable(ctx, id, run, p, processIO{ExecIO: eio, out: out})
	}
	sb := m.sandboxOf(id)
	return m.runWorkload(ctx, sb, run, p, processIO{ExecIO: eio, out: out})
}

// ExitDetached is the exit code Exec returns for a run that went on
// without its client (Process.DetachOnDisconnect): it had not exited.
const ExitDetached = -2

// claimRun checks p and claims a place for it in sandbox id; m.wg is
// held for the run (the caller's Done).
func (m *Manager) claimRun(id string, p Process) (*activeRun, error) {
	if err := checkProcess(p); err != nil {
		return nil, err
	}
	if err := m.backend.CheckProcess(p); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("run in sandbox %q: %w", id, errClosed)
	}
	sb, err := m.lookupLocked(id)
	if err != nil {
		return nil, err
	}
	run, err := m.beginRunLocked(sb, p)
	if err != nil {
		return nil, err
	}
	m.wg.Add(1)
	return run, nil
}

// sandboxOf is the sandbox of a run claimed in it (it cannot be removed
// while the run is in progress).
func (m *Manager) sandboxOf(id string) *sandbox {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.boxes[id]
}

// runDetachable runs a run that outlives its client: in a goroutine of
// its own, which Exec follows until the process ends or the client goes.
func (m *Manager) runDetachable(ctx context.Context, id string, run *activeRun, p Process, streams processIO) (int, error) {
	sb := m.sandboxOf(id)
	var (
		outMu   sync.Mutex // held across a call of streams.out
		gone    bool       // the client is gone: out is called no more
		goneWhy error
		failed  = make(chan struct{})
	)
	out := func(o Output) error {
		outMu.Lock()
		defer outMu.Unlock()
		if gone {
			return nil
		}
		if err := streams.out(o); err != nil {
			gone, goneWhy = true, fmt.Errorf("output: %w", err)
			close(failed)
		}
		return nil // the run goes on, whatever becomes of its client
	}
	eio := streams.ExecIO
	if started := eio.Started; started != nil {
		eio.Started = func(info RunInfo) {
			outMu.Lock()
			defer outMu.Unlock()
			if !gone {
				started(info)
			}
		}
	}
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		code, err := m.runWorkload(m.baseCtx, sb, run, p, processIO{ExecIO: eio, out: out})
		res <- result{code, err}
	}()
	select {
	case r := <-res:
		return r.code, r.err
	case <-failed:
	case <-ctx.Done():
	}
	// Once this holds outMu, no call of out (or Started) is in progress
	// and none is made after: the caller may drop its connection.
	outMu.Lock()
	if !gone {
		gone, goneWhy = true, fmt.Errorf("the client went away: %w", context.Cause(ctx))
	}
	outMu.Unlock()
	return ExitDetached, fmt.Errorf("run %s in sandbox %q goes on detached: %w", run.id, id, goneWhy)
}

// beginRunLocked claims a place in a ready or running sandbox for a run;
// m.mu is held.
func (m *Manager) beginRunLocked(sb *sandbox, p Process) (*activeRun, error) {
	switch sb.rec.State {
	case StateReady, StateRunning:
		if sb.checkpointing {
			return nil, Errorf(ErrConflict, "sandbox %q is being checkpointed; run again when it is done", sb.id)
		}
	default:
		return nil, Errorf(ErrConflict, "sandbox %q is %s; a run needs it ready or running", sb.id, sb.rec.State)
	}
	if n := sb.runs.inProgress(); n >= m.cfg.MaxRuns {
		return nil, Errorf(ErrConflict, "sandbox %q has %d runs in progress, the most it may have at once (the agent's --sandbox-max-runs); wait for one to end", sb.id, n)
	}
	run := newActiveRun(sb.runs.newID(), p, m.now(), m.cfg.RunOutputBytes)
	sb.runs.add(run)
	sb.rec.Runs = append(sb.rec.Runs, runRecord{ID: run.id, Cmd: run.cmd, StartedAt: run.started, Detached: run.detached})
	if sb.rec.State == StateReady {
		m.transitionLocked(sb, StateRunning, nil)
	}
	return run, nil
}

// runWorkload runs p as run and records its end.
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
	info := m.runStarted(sb, run, proc)
	if streams.Started != nil {
		streams.Started(info)
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

// runStarted lists a run whose process started, with its pid, and
// publishes run.started.
func (m *Manager) runStarted(sb *sandbox, run *activeRun, proc RunningProcess) RunInfo {
	pid := proc.Pid()
	m.mu.Lock()
	defer m.mu.Unlock()
	run.listed = true
	run.pid = pid
	attrs := map[string]string{"run_id": run.id}
	if pid > 0 {
		attrs["pid"] = strconv.Itoa(pid)
	}
	m.publishLocked(sb, ActionRunStarted, attrs)
	return runInfoLocked(sb.id, run)
}

// endRun records the end of a run: its exit code, or the error that kept
// it from running, and returns the sandbox to ready after its last run.
func (m *Manager) endRun(sb *sandbox, run *activeRun, code *int, runErr error) {
	run.out.close()
	if run.stdin != nil {
		run.stdin.end()
	}
	m.mu.Lock()
	now := m.now()
	for i, r := range sb.rec.Runs {
		if r.ID == run.id {
			sb.rec.Runs = append(sb.rec.Runs[:i:i], sb.rec.Runs[i+1:]...)
			break
		}
	}
	if len(sb.rec.Runs) == 0 {
		sb.rec.Runs = nil
	}
	sb.rec.Run = nil
	run.ended = now
	var attrs map[string]string
	if code != nil {
		run.state = RunExited
		run.exitCode = code
		sb.rec.LastExitCode = code
		sb.rec.LastExitedAt = now
		if sb.rec.State == StateRunning {
			sb.rec.Error = "" // a note on an earlier lost run; a failure stays
		}
		attrs = map[string]string{"exit_code": strconv.Itoa(*code)}
		if run.listed {
			ev := map[string]string{"run_id": run.id, "exit_code": strconv.Itoa(*code)}
			if sig := ExitSignal(*code); sig != "" {
				ev["signal"] = sig
			}
			m.publishLocked(sb, ActionRunExited, ev)
		}
	} else {
		attrs = map[string]string{"exit_code": strconv.Itoa(ExitLost), "error": runErr.Error()}
		run.state = RunExited
		run.errText = recordText(runErr.Error())
		if run.listed {
			m.publishLocked(sb, ActionRunExited, map[string]string{"run_id": run.id, "exit_code": strconv.Itoa(ExitLost), "error": run.errText})
		}
	}
	sb.runs.finish(run, m.cfg.RunOutputBytes*finishedOutputRuns)
	if sb.rec.State == StateRunning && sb.runs.inProgress() == 0 {
		m.transitionLocked(sb, StateReady, attrs, ActionIdle)
	}
	close(run.done)
	m.mu.Unlock()
	m.persistLogged(sb)
	m.metrics.runSeconds.Observe(now.Sub(run.started).Seconds())
	m.worked()
}
