package sandbox

// Runs with ids: the table of a sandbox's runs, detached runs (StartRun),
// and what a client can do with any run by its id: list it, read its
// output from an offset, signal it, write to its stdin.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// RunState is where a run is in its life.
type RunState string

// The run states.
const (
	RunRunning RunState = "running" // its process runs
	RunExited  RunState = "exited"  // its process ended (ExitCode), or never started (Error)
	// RunLost: it was in progress while the agent restarted; its output
	// and exit cannot be known, and what was left of it was killed.
	RunLost RunState = "lost"
)

// RunInfo is what a run looks like from outside.
type RunInfo struct {
	ID        string
	SandboxID string
	Cmd       []string // as kept: at most 32 arguments, 512 bytes
	TTY       bool
	// Detached: started with StartRun, or attached with
	// DetachOnDisconnect; it outlives its client.
	Detached bool
	State    RunState
	// Pid is the process's pid in the sandbox; 0 when not known (a
	// process started through the runtime, or a lost run).
	Pid       int
	StartedAt time.Time
	EndedAt   time.Time // zero while it runs
	ExitCode  *int      // nil while it runs, and for a run that never started
	// Signal names the signal of an exit code 128+n (SIGINT for 130): a
	// process killed by signal n reports that code, as a shell does (so
	// does one that called exit(128+n)).
	Signal string
	Error  string // why it never started, or was lost
	// Stdin: its stdin is open for WriteRunStdin.
	Stdin bool
	// OutputFirst and OutputEnd are the kept output's offsets: bytes
	// [OutputFirst, OutputEnd) are kept; the OutputFirst before them were
	// dropped to keep the run within Config.RunOutputBytes.
	OutputFirst, OutputEnd int64
	// Truncated names the streams that were cut after the process exited
	// (see Output.Truncated).
	Truncated []string
}

// Bounds on what a sandbox keeps of its runs.
const (
	// DefaultMaxRuns is how many runs a sandbox may have in progress at
	// once when Config.MaxRuns does not say.
	DefaultMaxRuns = 64
	// DefaultHangupGrace is how long a hung-up process has between SIGHUP
	// and SIGKILL when Config.HangupGrace does not say.
	DefaultHangupGrace = 2 * time.Second
	// maxFinishedRuns is how many ended runs a sandbox keeps, newest
	// first, until it is removed.
	maxFinishedRuns = 100
	// finishedOutputRuns bounds the output the ended runs of a sandbox
	// keep together, in runs' worth of Config.RunOutputBytes: past it the
	// oldest ended runs' output is dropped (their state stays).
	finishedOutputRuns = 4
)

// runTable is a sandbox's runs, in the order they started; m.mu guards it.
type runTable struct {
	order []*activeRun
	byID  map[string]*activeRun
}

func (t *runTable) add(r *activeRun) {
	if t.byID == nil {
		t.byID = map[string]*activeRun{}
	}
	t.order = append(t.order, r)
	t.byID[r.id] = r
}

// newID is a run id not in use in the table: "r-" and 16 hex digits.
func (t *runTable) newID() string {
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id := "r-" + hex.EncodeToString(b[:])
		if _, taken := t.byID[id]; !taken {
			return id
		}
	}
}

func (t *runTable) inProgress() int {
	n := 0
	for _, r := range t.order {
		if r.state == RunRunning {
			n++
		}
	}
	return n
}

// running lists the runs in progress.
func (t *runTable) running() []*activeRun {
	var out []*activeRun
	for _, r := range t.order {
		if r.state == RunRunning {
			out = append(out, r)
		}
	}
	return out
}

// finish keeps an ended run within the bounds: a run that never started
// goes; past maxFinishedRuns the oldest ended run goes; past outputBytes
// of ended runs' output the oldest ended runs' output goes.
func (t *runTable) finish(r *activeRun, outputBytes int64) {
	if !r.listed {
		t.remove(r)
	}
	var ended []*activeRun
	for _, x := range t.order {
		if x.state != RunRunning {
			ended = append(ended, x)
		}
	}
	for len(ended) > maxFinishedRuns {
		t.remove(ended[0])
		ended = ended[1:]
	}
	var kept int64
	for i := len(ended) - 1; i >= 0; i-- {
		first, end, _ := ended[i].out.bounds()
		kept += end - first
		if kept > outputBytes {
			ended[i].out.release()
		}
	}
}

func (t *runTable) remove(r *activeRun) {
	if i := slices.Index(t.order, r); i >= 0 {
		t.order = slices.Delete(t.order, i, i+1)
	}
	delete(t.byID, r.id)
}

// runInfoLocked is a run's RunInfo; m.mu is held.
func runInfoLocked(sandboxID string, r *activeRun) RunInfo {
	first, end, _ := r.out.bounds()
	info := RunInfo{
		ID: r.id, SandboxID: sandboxID, Cmd: slices.Clone(r.cmd), TTY: r.tty, Detached: r.detached,
		State: r.state, Pid: r.pid, StartedAt: r.started, EndedAt: r.ended, Error: r.errText,
		Stdin: r.stdin != nil && r.state == RunRunning && r.stdin.open(), OutputFirst: first, OutputEnd: end,
		Truncated: r.out.cutStreams(),
	}
	if r.exitCode != nil {
		code := *r.exitCode
		info.ExitCode = &code
		info.Signal = ExitSignal(code)
	}
	return info
}

// ExitSignal names the signal of an exit code 128+n (SIGINT for 130), or
// "" for any other code.
func ExitSignal(code int) string {
	if code <= 128 || code > 128+64 {
		return ""
	}
	return unix.SignalName(unix.Signal(code - 128))
}

// RunRequest is a detached run's: the process, and whether its stdin
// stays open for WriteRunStdin (else the process sees its end at once).
type RunRequest struct {
	Process Process
	Stdin   bool
}

// StartRun starts a detached run in a ready or running sandbox and
// returns once its process has started (or could not be). The run goes
// on without any client: its output is kept (Config.RunOutputBytes, the
// oldest bytes dropped past it) for ReadRunOutput; it ends when its
// process exits, past its Timeout (SIGKILL), when the sandbox is stopped
// (SIGTERM, then SIGKILL), or with SignalRun. The bounds and states are
// Exec's.
func (m *Manager) StartRun(id string, req RunRequest) (RunInfo, error) {
	p := req.Process
	p.DetachOnDisconnect = true
	run, err := m.claimRun(id, p)
	if err != nil {
		return RunInfo{}, err
	}
	var eio ExecIO
	if req.Stdin {
		pr, pw := io.Pipe()
		run.stdin = &runStdin{w: pw, turn: make(chan struct{}, 1)}
		eio.Stdin = pr
	}
	started := make(chan RunInfo, 1)
	eio.Started = func(info RunInfo) { started <- info }
	sb := m.sandboxOf(id)
	failed := make(chan error, 1)
	go func() {
		defer m.wg.Done()
		if _, err := m.runWorkload(m.baseCtx, sb, run, p, processIO{ExecIO: eio, out: discardOutput}); err != nil {
			failed <- err
		}
	}()
	select {
	case info := <-started:
		return info, nil
	case err := <-failed:
		select {
		case info := <-started: // it started; it failed later
			return info, nil
		default:
		}
		return RunInfo{}, err
	}
}

// Runs lists a sandbox's runs, in progress and ended (the last 100), in
// the order they started.
func (m *Manager) Runs(id string) ([]RunInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, err := m.lookupLocked(id)
	if err != nil {
		return nil, err
	}
	out := []RunInfo{}
	for _, r := range sb.runs.order {
		if r.listed {
			out = append(out, runInfoLocked(id, r))
		}
	}
	return out, nil
}

// GetRun returns one run of a sandbox.
func (m *Manager) GetRun(id, runID string) (RunInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, r, err := m.lookupRunLocked(id, runID)
	if err != nil {
		return RunInfo{}, err
	}
	return runInfoLocked(id, r), nil
}

// lookupRunLocked finds a listed run of a sandbox; m.mu is held.
func (m *Manager) lookupRunLocked(id, runID string) (*sandbox, *activeRun, error) {
	sb, err := m.lookupLocked(id)
	if err != nil {
		return nil, nil, err
	}
	r, ok := sb.runs.byID[runID]
	if !ok || !r.listed {
		return nil, nil, Errorf(ErrNotFound, "run %q of sandbox %q", runID, id)
	}
	return sb, r, nil
}

// Signal is a signal's number.
type Signal = unix.Signal

// ParseSignal reads a signal's name as signal(7) writes it, with or
// without the SIG prefix ("SIGINT", "INT"), upper case. Numbers are not
// taken: they differ between architectures.
func ParseSignal(name string) (unix.Signal, error) {
	n := name
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	sig := unix.SignalNum(n)
	if sig == 0 || name == "" {
		return 0, InvalidField("signal", "%q is not a signal name as in signal(7), such as SIGINT, SIGTERM, SIGHUP, SIGKILL or SIGUSR1 (the SIG prefix may be left out)", name)
	}
	return sig, nil
}

// SignalRun sends sig to a run's process (not to its descendants), as
// kill(1) does. A run that has ended is ErrConflict.
func (m *Manager) SignalRun(ctx context.Context, id, runID string, sig unix.Signal) error {
	m.mu.Lock()
	_, r, err := m.lookupRunLocked(id, runID)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	req := signalRequest{sig: sig, reply: make(chan error, 1)}
	select {
	case r.sigs <- req:
	case <-r.pumping:
		return Errorf(ErrConflict, "run %q of sandbox %q has exited; no process to signal", runID, id)
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := <-req.reply; err != nil {
		return fmt.Errorf("signal run %q of sandbox %q: %w", runID, id, err)
	}
	return nil
}

// runStdin is a detached run's open stdin.
type runStdin struct {
	w *io.PipeWriter
	// turn is held (a value in it) by the writer whose bytes go in now, so
	// that two requests' bytes never interleave.
	turn   chan struct{}
	closed bool // m.mu guards it
}

func (s *runStdin) open() bool { return !s.closed }

// end closes the process's stdin when the run ends, so writers waiting on
// it return.
func (s *runStdin) end() { _ = s.w.CloseWithError(errRunEnded) }

var errRunEnded = errors.New("the run has ended")

// WriteRunStdin writes data to a detached run's stdin, waiting while the
// process does not read (ctx bounds the wait); with closeAfter the stdin
// is closed after it (the process reads its end). A run whose stdin is
// not open (started without it, closed, or ended) is ErrConflict.
func (m *Manager) WriteRunStdin(ctx context.Context, id, runID string, data []byte, closeAfter bool) error {
	m.mu.Lock()
	_, r, err := m.lookupRunLocked(id, runID)
	if err == nil && (r.stdin == nil || r.stdin.closed || r.state != RunRunning) {
		err = Errorf(ErrConflict, "the stdin of run %q of sandbox %q is not open (a run has one with stdin: true, until it is closed or the run ends)", runID, id)
	}
	m.mu.Unlock()
	if err != nil {
		return err
	}
	s := r.stdin
	select {
	case s.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.turn }()
	if len(data) > 0 {
		written := make(chan error, 1)
		go func() {
			_, err := s.w.Write(data)
			written <- err
		}()
		select {
		case err = <-written:
		case <-ctx.Done():
			// The process does not read: give up the rest, so the next
			// writer is not held behind bytes of a request that is gone.
			_ = s.w.CloseWithError(ctx.Err())
			if err := <-written; err != nil {
				m.log.Debug("stdin write ended by its request's end", "run", runID, "err", err)
			}
			m.closeStdin(r)
			return fmt.Errorf("stdin of run %q: the process did not read it all before the request ended; its stdin is closed: %w", runID, ctx.Err())
		}
		if err != nil {
			return Errorf(ErrConflict, "the stdin of run %q of sandbox %q is closed: %v", runID, id, err)
		}
	}
	if closeAfter {
		_ = s.w.Close()
		m.closeStdin(r)
	}
	return nil
}

func (m *Manager) closeStdin(r *activeRun) {
	m.mu.Lock()
	r.stdin.closed = true
	m.mu.Unlock()
}

// readBatch bounds the bytes of one ReadRunOutput call of fn.
const readBatch = 1 << 20

// ReadRunOutput calls fn with a run's kept output from byte offset on, in
// order, each call with the chunks that were ready then (up to readBatch
// bytes; their Data is valid until fn returns); with follow it
// waits for more until the run's output is complete (or ctx ends), else
// it stops at the end of what is kept now. It returns the run's info as
// of the last chunk read: with follow and a nil error, the ended run's
// (its exit code), unless ctx ended first.
//
// An offset that is negative or past the end of the output is ErrInvalid;
// one older than the first kept byte is an *OutputGoneError (also while
// following, when the reader falls more than the bound behind). Reading
// never holds the run up: the run writes into its bounded buffer,
// dropping the oldest bytes, whoever reads.
func (m *Manager) ReadRunOutput(ctx context.Context, id, runID string, offset int64, follow bool, fn func([]OutputChunk) error) (RunInfo, error) {
	m.mu.Lock()
	_, r, err := m.lookupRunLocked(id, runID)
	m.mu.Unlock()
	if err != nil {
		return RunInfo{}, err
	}
	if err := r.out.checkOffset(offset); err != nil {
		return RunInfo{}, err
	}
	// The chunks' copies, reused (fn may not keep them), grown with the
	// output. Never empty: a read into no room would return no chunks
	// even for bytes written since the check above, and wait on a wake-up
	// that has already passed.
	buf := make([]byte, 4<<10)
	for {
		if _, end, _ := r.out.bounds(); end-offset > int64(cap(buf)) && cap(buf) < readBatch {
			buf = make([]byte, min(max(end-offset, 2*int64(cap(buf))), readBatch))
		}
		chunks, next, more, closed, err := r.out.read(offset, buf[:cap(buf)])
		if err != nil {
			return RunInfo{}, err
		}
		if len(chunks) > 0 {
			if err := fn(chunks); err != nil {
				return RunInfo{}, err
			}
			offset = next
			continue
		}
		if closed || !follow {
			break
		}
		select {
		case <-more:
		case <-ctx.Done():
			return m.runInfo(id, r), ctx.Err()
		}
	}
	if follow {
		<-r.done // closed just after the output: its exit is recorded
	}
	return m.runInfo(id, r), nil
}

func (m *Manager) runInfo(id string, r *activeRun) RunInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return runInfoLocked(id, r)
}
