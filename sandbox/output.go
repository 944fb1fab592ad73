package sandbox

// The output pump: a running process's stdout and stderr, read as they
// come and handed to the run's callback in order, with back-pressure.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Nothing waits on a clock to gather output: a read takes what the pipe
// holds, and the pipes are large (the backend's, 1 MiB where the kernel
// allows), so a writer faster than the reader and its client fills the
// pipe while they work, and the next read takes it all at once. A sleep to
// let a stream of small writes gather (as there was) cost more than the
// wake-ups it saved: measured side by side, processes writing 4 and 8 KiB
// at a time went out as fast or faster without it (busybox head 125-135
// MB/s against 78-125, GNU head 360-620 against 165-560), in reads of 8
// KiB and more on average, at less of the agent's CPU.
const (
	// outBufSize is the read size of each output stream: large reads keep
	// the per-call overhead small at high throughput. It also bounds a
	// chunk handed to the output callback, and so a message a client
	// receives.
	outBufSize = 1 << 20
	// idleBufSize is the read size of a stream between bursts: a process
	// that runs long and writes little (a server, a REPL) holds this
	// much per stream, not outBufSize, while its pump waits.
	idleBufSize = 16 << 10
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
)

// outBufs and idleBufs recycle the output read buffers.
var (
	outBufs = sync.Pool{New: func() any {
		b := make([]byte, outBufSize)
		return &b
	}}
	idleBufs = sync.Pool{New: func() any {
		b := make([]byte, idleBufSize)
		return &b
	}}
)

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

// drive pumps a started process's output to streams.out and enforces its
// timeout, ctx, and the stop/kill requests on run. killedBy is why the
// manager killed it, if it did.
func (m *Manager) pumpOutput(ctx context.Context, proc RunningProcess, run *activeRun, p Process, streams processIO) (code int, killedBy error, err error) {
	defer proc.Close()
	var (
		outMu    sync.Mutex
		outErr   error
		aborted  = make(chan struct{})
		abortOne sync.Once
		exited   atomic.Bool
		pumps    sync.WaitGroup
	)
	var clientGone atomic.Bool // out is called no more: its client hung up
	send := func(o Output) bool {
		outMu.Lock()
		defer outMu.Unlock()
		if o.Truncated != "" {
			run.out.noteCut(o.Stream)
		}
		run.out.write(o.Stream, o.Data)
		if outErr != nil || clientGone.Load() {
			return true // kept in the run's output; the process is not held up
		}
		if oerr := streams.out(o); oerr != nil {
			outErr = oerr
			abortOne.Do(func() { close(aborted) })
			return true
		}
		return true
	}
	pump := func(f *os.File, stream string) {
		defer pumps.Done()
		// The stream is read idleBufSize at a time until a read fills
		// that, then outBufSize at a time until one does not: a burst
		// goes in large reads, and between bursts the pump waits
		// holding the small buffer only.
		idle := idleBufs.Get().(*[]byte)
		defer idleBufs.Put(idle)
		var burst *[]byte
		defer func() {
			if burst != nil {
				outBufs.Put(burst)
			}
		}()
		buf := *idle
		rc, rcErr := f.SyscallConn()
		for {
			n, rerr := f.Read(buf)
			if n > 0 {
				// Once out has failed, what is read is dropped: the
				// process is being killed, and must not block on a
				// pipe nobody reads meanwhile.
				send(Output{Stream: stream, Data: buf[:n]})
			}
			switch {
			case n == len(buf) && burst == nil:
				burst = outBufs.Get().(*[]byte)
				buf = *burst
			case n < len(buf) && burst != nil:
				outBufs.Put(burst)
				burst, buf = nil, *idle
			}
			if rerr == nil {
				continue
			}
			if errors.Is(rerr, os.ErrDeadlineExceeded) && exited.Load() && rcErr == nil {
				// pumpOutput woke this read: the process has exited.
				if why := drainExited(f, rc, buf, func(p []byte) bool { return send(Output{Stream: stream, Data: p}) }); why != "" {
					m.log.Warn("output cut: still open after the process exited", "stream", stream, "cmd", p.Cmd)
					send(Output{Stream: stream, Truncated: why})
				}
			}
			return // EOF: every writer closed the stream; or it failed
		}
	}
	files := []*os.File{proc.Stdout()}
	pumps.Add(1)
	go pump(proc.Stdout(), StreamStdout)
	if f := proc.Stderr(); f != nil {
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
		c, err := proc.Wait()
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
		if err := proc.Signal(unix.SIGKILL, true); err != nil {
			m.log.Warn("kill workload", "cmd", p.Cmd, "err", err)
		}
	}
	// hangUp is a terminal's hang-up: SIGHUP to the process and its
	// descendants (as a terminal's goes to its whole session), SIGKILL to
	// them once the grace has passed. Its output goes on into the run's
	// buffer, so it is never held up meanwhile.
	var hungUp error
	hupKill := make(chan struct{})
	stopHupKill := func() bool { return false }
	defer func() { stopHupKill() }()
	hangUp := func(why error) {
		if hungUp != nil || killedBy != nil {
			return
		}
		hungUp = why
		clientGone.Store(true)
		if err := proc.Signal(unix.SIGHUP, true); err != nil {
			m.log.Warn("hang up workload", "cmd", p.Cmd, "err", err)
		}
		stopHupKill = m.afterFunc(m.cfg.HangupGrace, func() { close(hupKill) })
	}
	done, term, killc, resize, sigs, ownSigs := ctx.Done(), run.termCh, run.killCh, streams.Resize, streams.Signals, run.sigs
	var res result
wait:
	for {
		select {
		case res = <-waited:
			break wait
		case <-done:
			hangUp(fmt.Errorf("the client went away: %w", context.Cause(ctx)))
			done = nil
		case <-hupKill:
			kill(hungUp)
			hupKill = nil
		case <-timeout:
			kill(fmt.Errorf("%w after %s", errTimeout, p.Timeout))
			timeout = nil
		case <-aborted:
			hangUp(fmt.Errorf("output: %w", outErr))
			aborted = nil
		case req := <-ownSigs:
			req.reply <- proc.Signal(req.sig, false)
		case sig, ok := <-sigs:
			if !ok {
				sigs = nil
			} else if err := proc.Signal(sig, false); err != nil {
				m.log.Warn("signal workload", "cmd", p.Cmd, "signal", sig, "err", err)
			}
		case <-term:
			if err := proc.Signal(unix.SIGTERM, false); err != nil {
				m.log.Warn("terminate workload", "cmd", p.Cmd, "err", err)
			}
			term = nil
		case <-killc:
			kill(run.killWhy)
			killc = nil
		case sz, ok := <-resize:
			switch {
			case !ok:
				resize = nil
			case !p.TTY: // no terminal to resize
			default:
				if err := proc.Resize(sz.Width, sz.Height); err != nil {
					m.log.Warn("resize terminal", "cmd", p.Cmd, "err", err)
				}
			}
		}
	}
	close(run.pumping) // no more signals: the process is gone
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
	if killedBy == nil && hungUp != nil {
		killedBy = hungUp // it ended in its grace; its code stands
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
