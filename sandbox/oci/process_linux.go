package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/sandbox/initproc"
)

// pipeSize is the capacity asked of output pipes: fewer, larger reads
// and writes at high throughput (the default is 64 KiB).
const pipeSize = 1 << 20

// pidFileWait bounds how long a signal waits for the runtime to write the
// process's pid file.
const pidFileWait = 10 * time.Second

// CheckProcess accepts every process: a terminal works on every runtime
// through the sandbox's init (see StartProcess).
func (b *Backend) CheckProcess(p sandbox.Process) error { return nil }

// StartProcess starts p in the sandbox. The sandbox's init starts it, when
// the init takes processes (every sandbox this agent made): the agent
// sends it the process and its stdio, and it reports the exit (see
// startViaInit).
// Otherwise `runc exec` does: without a terminal the process writes
// straight into the agent's pipes (crun; runc copies through pipes of its
// own) and reads stdin from a pipe the agent copies stdio.Stdin into (or
// /dev/null); with one, the runtime hands the agent the terminal's master
// through a console socket (crun only: runc does so only for an exec it
// detaches from), and stdio.Stdin is copied into the master.
func (b *Backend) StartProcess(ctx context.Context, id string, s sandbox.Spec, p sandbox.Process, stdio sandbox.ExecIO) (sandbox.RunningProcess, error) {
	box, err := b.box(id)
	if err != nil {
		return nil, err
	}
	dir := b.bundle(id)
	rootfs := filepath.Join(dir, "rootfs")
	userSpec := firstNonEmpty(p.User, s.User, box.meta.Image.User)
	u, err := resolveUser("user", userSpec, func(name string) ([]byte, error) { return readFileInRoot(rootfs, name) })
	if err != nil {
		return nil, err
	}
	env := processEnv(box.meta.Image.Env, s.Env, p.Env, u.Home, p.TTY)
	cwd := firstNonEmpty(p.WorkingDir, s.WorkingDir, box.meta.Image.WorkingDir, "/")
	proc := processSpec(p.Cmd, env, cwd, u, p.TTY)
	size := stdio.Size
	if size != nil && (size.Width == 0 || size.Height == 0) {
		size = nil
	}
	if p.TTY && size != nil {
		// runc and crun size the terminal before the process starts.
		proc.ConsoleSize = &specs.Box{Width: uint(size.Width), Height: uint(size.Height)}
	}
	stdin := stdio.Stdin
	if p.TTY && stdin == nil {
		stdin = eofReader{} // the terminal's EOF at once
	}
	st := initproc.Start{Args: p.Cmd, Env: env, Dir: cwd, UID: u.UID, GID: u.GID, Groups: u.AdditionalGIDs, TTY: p.TTY}
	if p.TTY && size != nil {
		st.Width, st.Height = size.Width, size.Height
	}
	if msg, err := json.Marshal(st); err == nil && len(msg) <= maxInitStart {
		if c := dialInit(dir); c != nil {
			return b.startViaInit(c, box, msg, p.TTY, stdin)
		}
	}
	if p.TTY && strings.HasPrefix(b.runtimeName, "runc") {
		return nil, sandbox.InvalidField("tty", "not supported under runc for sandbox %q, made by an earlier agent whose init takes no processes; recreate it", id)
	}

	b.mu.Lock()
	b.seq++
	seq := b.seq
	b.mu.Unlock()
	e := &process{
		box:     box,
		pidFile: filepath.Join(dir, "exec-"+strconv.FormatUint(seq, 10)+".pid"),
		done:    make(chan struct{}),
	}
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()

	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, devnull)
	fio := &fileIO{stdin: devnull, stdout: devnull}

	// stderr: the process's, or with a terminal the runtime's own messages.
	if e.stderr, fio.stderr, err = outputPipe(); err != nil {
		return nil, err
	}
	fio.closeAfterStart = append(fio.closeAfterStart, fio.stderr)
	if !p.TTY {
		if e.stdout, fio.stdout, err = outputPipe(); err != nil {
			_ = fio.CloseAfterStart()
			return nil, err
		}
		fio.closeAfterStart = append(fio.closeAfterStart, fio.stdout)
		if stdin != nil {
			r, w, err := os.Pipe()
			if err != nil {
				_ = fio.CloseAfterStart()
				return nil, err
			}
			fio.stdin = r
			fio.closeAfterStart = append(fio.closeAfterStart, r)
			e.stdinW = w
		}
	}
	opts := &runc.ExecOpts{IO: fio, PidFile: e.pidFile}
	var sock *runc.Socket
	if p.TTY {
		if sock, err = runc.NewTempConsoleSocket(); err != nil {
			_ = fio.CloseAfterStart()
			return nil, fmt.Errorf("console socket: %w", err)
		}
		e.closers = append(e.closers, sock)
		opts.ConsoleSocket = sock
	}
	started := make(chan int, 1)
	opts.Started = started
	go func() {
		defer close(e.done)
		err := b.rt.Exec(context.WithoutCancel(ctx), id, proc, opts)
		var ee *runc.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			e.code = ee.Status
		default:
			e.code, e.err = -1, fmt.Errorf("%s exec: %w", b.runtimeName, err)
		}
		_ = fio.CloseAfterStart() // if the start failed
	}()
	runtimePid, ok := <-started
	if !ok {
		<-e.done
		if e.err == nil {
			e.err = fmt.Errorf("%s exec did not start", b.runtimeName)
		}
		return nil, e.err
	}
	e.runtimePid = runtimePid
	if p.TTY {
		if err := e.receiveTerminal(sock); err != nil {
			return nil, err
		}
		if size != nil { // in case the runtime did not
			if err := e.Resize(size.Width, size.Height); err != nil {
				b.log.Warn("size the terminal", "id", id, "err", err)
			}
		}
	}
	if stdin != nil {
		go e.copyStdin(stdin)
	}
	ok = true
	return e, nil
}

// outputPipe makes a pipe for a process's output: the agent's read end,
// the process's write end.
func outputPipe() (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	// Best effort: a larger pipe means fewer wake-ups at high throughput.
	// (Through SyscallConn: File.Fd would take r out of the poller, and
	// its read deadlines would stop working.)
	if rc, err := r.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize) })
	}
	return r, w, nil
}

// process is a process started by runc exec.
type process struct {
	box     *container
	pidFile string

	stdout, stderr *os.File // the agent's read ends
	stdinW         *os.File // the agent's end of the process's stdin
	term           console.Console
	closers        []io.Closer

	done chan struct{} // closed when the runtime has exited: code, err set
	code int
	err  error

	pidMu sync.Mutex
	pid   int // the process, once known

	runtimePid int       // the runtime's exec process, the agent's child
	killOnce   sync.Once // arms killRuntimeLater once

	// ctl is the connection to the sandbox's init that started the
	// process, when it did (no runtime process then).
	ctl   *net.UnixConn
	ctlMu sync.Mutex // serializes writes on ctl
	nsPid int        // its pid in the sandbox, as the init said
}

// runtimeKillDelay is how long a killed process's runtime gets to exit
// before it is killed too.
const runtimeKillDelay = 500 * time.Millisecond

// killRuntimeLater kills the runtime's own exec process when it has not
// exited soon after the workload was killed. runc exec without a terminal
// copies the output through pipes of its own and exits only when every
// holder has closed them, so a background child of the workload (now the
// sandbox init's) would hold the run, and a stop or remove behind it,
// forever. The runtime is the agent's child and not yet waited for, so its
// pid cannot have been reused.
func (e *process) killRuntimeLater() {
	e.killOnce.Do(func() {
		if e.runtimePid <= 0 {
			return
		}
		go func() {
			t := time.NewTimer(runtimeKillDelay)
			defer t.Stop()
			select {
			case <-e.done:
			case <-t.C:
				_ = unix.Kill(e.runtimePid, unix.SIGKILL)
			}
		}()
	})
}

var _ sandbox.RunningProcess = (*process)(nil)

// receiveTerminal takes the terminal's master from the runtime.
func (e *process) receiveTerminal(sock *runc.Socket) error {
	type result struct {
		c   console.Console
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := sock.ReceiveMaster()
		got <- result{c, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			return fmt.Errorf("receive the terminal: %w", r.err)
		}
		e.term = r.c
		var err error
		e.stdout, err = pollableDup(r.c.Fd())
		return err
	case <-e.done:
		sock.Close() // unblocks ReceiveMaster
		if e.err != nil {
			return e.err
		}
		return fmt.Errorf("the process exited (code %d) before its terminal was set up%s", e.code, e.runtimeMessage())
	}
}

// copyStdin copies r into the process's stdin until r ends (EOF or an
// error), then passes the end on: it closes the stdin pipe, or on a
// terminal writes its EOF character (twice after an unfinished line: the
// first only ends the line). An end of sandbox.ErrStdinDetached is not
// passed on: the process's stdin stays open. It stops early when the
// process's stdin is gone.
func (e *process) copyStdin(r io.Reader) {
	if e.term == nil {
		if _, err := io.Copy(e.stdinW, r); !errors.Is(err, sandbox.ErrStdinDetached) {
			e.stdinW.Close()
		}
		return
	}
	w := e.stdout // the terminal's master, in the poller
	buf := make([]byte, 32<<10)
	lineStart := true
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			c := buf[n-1]
			lineStart = c == '\n' || c == '\r'
		}
		if err != nil {
			if errors.Is(err, sandbox.ErrStdinDetached) {
				return
			}
			break
		}
	}
	eof := e.eofChar()
	end := []byte{eof}
	if !lineStart {
		end = append(end, eof)
	}
	_, _ = w.Write(end)
}

// eofChar is the terminal's EOF character (VEOF), ^D unless it was changed.
func (e *process) eofChar() byte {
	eof := byte(4)
	if rc, err := e.stdout.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			if t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS); err == nil && t.Cc[unix.VEOF] != 0 {
				eof = t.Cc[unix.VEOF]
			}
		})
	}
	return eof
}

// eofReader is an input at its end at once.
type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// runtimeMessage is what the runtime wrote on stderr, once it has exited,
// as ": message", or nothing.
func (e *process) runtimeMessage() string {
	if e.stderr == nil {
		return ""
	}
	_ = e.stderr.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, 4096)
	n, _ := io.ReadFull(e.stderr, buf)
	if msg := strings.TrimSpace(string(buf[:n])); msg != "" {
		return ": " + msg
	}
	return ""
}

// Pid is the process's pid in the sandbox, as its init said; 0 for one
// the runtime started (a sandbox an earlier agent made).
func (e *process) Pid() int { return e.nsPid }

func (e *process) Stdout() *os.File { return e.stdout }
func (e *process) Stderr() *os.File { return e.stderr }

// processPid is the process's pid on the host: for one the init started,
// the init's child with its pid in the sandbox; else read from the
// runtime's pid file, waited for while the runtime runs. 0 means the
// process is gone.
func (e *process) processPid() (int, error) {
	e.pidMu.Lock()
	defer e.pidMu.Unlock()
	if e.pid != 0 {
		return e.pid, nil
	}
	if e.ctl != nil {
		e.pid = initChild(e.box.init.pid, e.nsPid)
		return e.pid, nil
	}
	pid, err := waitPidFile(e.pidFile, e.done, pidFileWait)
	e.pid = pid
	return pid, err
}

// waitPidFile reads the pid file a runtime writes at path once the process
// started, waiting (up to d) for it to appear: the runtime renames it into
// place (runc) or writes it and closes it (crun), which inotify reports.
// It returns 0 when done closes first: the runtime exited, the process is
// gone.
//
// The file is most often there already. Where no inotify instance can be
// had (each user gets a few, 128 by default), it polls instead: a signal,
// SIGKILL among them, must not fail for want of one.
func waitPidFile(path string, done <-chan struct{}, d time.Duration) (int, error) {
	if pid, err := readPidFile(path); err == nil {
		return pid, nil
	}
	events, err := watchCreated(filepath.Dir(path))
	if err != nil {
		return pollPidFile(path, done, d)
	}
	defer events.Close()
	deadline := time.Now().Add(d)
	_ = events.SetReadDeadline(deadline)
	ended := make(chan struct{})
	defer close(ended)
	go func() {
		select {
		case <-done:
			_ = events.SetReadDeadline(time.Now()) // wakes the read below
		case <-ended:
		}
	}()
	buf := make([]byte, 4096)
	for {
		// Read after the watch is in place, so a write between the two
		// is seen by one or the other.
		if pid, err := readPidFile(path); err == nil {
			return pid, nil
		}
		select {
		case <-done:
			return 0, nil
		default:
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no pid file %s after %s", path, d)
		}
		if _, err := events.Read(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, fmt.Errorf("wait for the pid file %s: %w", path, err)
		}
	}
}

// watchCreated is an inotify instance watching dir for files renamed into
// it or written and closed, non-blocking, so that its reads wait in the
// poller and end at a deadline.
func watchCreated(dir string) (*os.File, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	events := os.NewFile(uintptr(fd), "inotify")
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		events.Close()
		return nil, err
	}
	return events, nil
}

// pollPidFile is waitPidFile without inotify: it looks every 2 ms.
func pollPidFile(path string, done <-chan struct{}, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		if pid, err := readPidFile(path); err == nil {
			return pid, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no pid file %s after %s", path, d)
		}
		select {
		case <-done:
			return 0, nil
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Signal signals the process (with tree, its descendants too, see
// signalTree) if it still runs in the sandbox.
func (e *process) Signal(sig unix.Signal, tree bool) error {
	if e.ctl != nil && !tree {
		return e.signalInit(sig) // the init knows whether its child still runs
	}
	if sig == unix.SIGKILL {
		e.killRuntimeLater()
	}
	pid, err := e.processPid()
	if err != nil || pid == 0 {
		return err
	}
	if tree {
		return signalTree(pid, e.box.ns, sig)
	}
	return signalInNamespace(pid, e.box.ns, sig)
}

// Resize sets the terminal's size.
func (e *process) Resize(width, height uint16) error {
	if e.term == nil {
		return errors.New("the process has no terminal")
	}
	return e.term.Resize(console.WinSize{Width: width, Height: height})
}

// Wait waits for the runtime, which exits with the process.
func (e *process) Wait() (int, error) {
	<-e.done
	return e.code, e.err
}

// Close releases the pipes, terminal, pid file and init connection.
func (e *process) Close() error {
	if e.ctl != nil {
		e.ctl.Close()
	}
	for _, f := range []*os.File{e.stdout, e.stderr, e.stdinW} {
		if f != nil {
			f.Close()
		}
	}
	if e.term != nil {
		e.term.Close()
	}
	for _, c := range e.closers {
		c.Close()
	}
	os.Remove(e.pidFile)
	return nil
}
