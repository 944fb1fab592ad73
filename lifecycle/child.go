package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// exitTailLines is how many lines of a daemon's log its exit and failure
// reports carry.
const exitTailLines = 20

// child is one daemon process the Runtime supervises: one it started
// (cmd), or one it adopted from an earlier agent (adopted). One goroutine
// (supervise) waits for it and closes exited when it has ended; the fields
// below exited are set before that and read only after it.
type child struct {
	name     string
	pid      int
	started  time.Time // when it was started, or adopted
	logPath  string    // "" when the output is discarded
	logStart int64     // the log's size when the child started
	cmd      *exec.Cmd // the Runtime's own child; nil when adopted
	adopted  *pidfd    // a daemon left by an earlier agent; nil when cmd is set
	stopping atomic.Bool
	killed   atomic.Bool // stop had to SIGKILL it

	exited chan struct{}
	state  *os.ProcessState // how cmd ended; nil for an adopted daemon
	tail   string           // the last lines it logged
}

func (c *child) hasExited() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// exitStatus says how the child ended ("exit status 1", "signal: killed").
// Call it only after exited is closed. An adopted daemon is not the
// agent's child: its exit status goes to its parent, so only what the
// agent did to it is known.
func (c *child) exitStatus() string {
	switch {
	case c.state != nil:
		return c.state.String()
	case c.adopted == nil:
		return "exit status unknown"
	case c.killed.Load():
		return "killed (adopted: exit status unknown)"
	case c.stopping.Load():
		return "exited after SIGTERM (adopted: exit status unknown)"
	}
	return "exited (adopted: exit status unknown)"
}

// signal sends sig to the child; os.ErrProcessDone once it has ended.
func (c *child) signal(sig unix.Signal) error {
	if c.adopted != nil {
		return c.adopted.signal(sig)
	}
	return c.cmd.Process.Signal(sig)
}

// logTail says where the child's last lines are and what they are.
func (c *child) logTail() string {
	if c.logPath == "" {
		return fmt.Sprintf("%s output was discarded", c.name)
	}
	if c.tail == "" {
		return fmt.Sprintf("%s logged nothing to %s", c.name, c.logPath)
	}
	return fmt.Sprintf("last lines of %s:\n%s", c.logPath, c.tail)
}

// exitDetail describes an ended child, for Status and failures.
func (c *child) exitDetail() string {
	return fmt.Sprintf("%s (pid %d); %s", c.exitStatus(), c.pid, c.logTail())
}

// liveTail is logTail for a child that may still run.
func (c *child) liveTail() string {
	if c.logPath == "" {
		return fmt.Sprintf("%s output was discarded", c.name)
	}
	tail := strings.TrimRight(readTail(c.logPath, c.logStart, exitTailLines), "\n")
	if tail == "" {
		return fmt.Sprintf("%s logged nothing to %s", c.name, c.logPath)
	}
	return fmt.Sprintf("last lines of %s:\n%s", c.logPath, tail)
}

// spawn starts a daemon as a child of the Runtime, its output appended to
// <LogDir>/<name>.log, records its pid when the daemon does not, and
// supervises it. It refuses once Shutdown began.
func (r *Runtime) spawn(name, path string, args, env []string) (*child, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("runtime is shut down")
	}
	logf, logStart, err := r.openDaemonLog(name)
	if err != nil {
		r.log.Warn("daemon log unavailable; output discarded", "service", name, "error", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	if logf != nil {
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	setProcAttr(cmd)
	err = r.cfg.StartProcess(cmd)
	if logf != nil {
		logf.Close() // the child holds its own descriptor
	}
	if err != nil {
		return nil, err
	}
	c := &child{
		name:     name,
		pid:      cmd.Process.Pid,
		started:  time.Now(),
		logStart: logStart,
		cmd:      cmd,
		exited:   make(chan struct{}),
	}
	if logf != nil {
		c.logPath = logf.Name()
	}
	r.children[name] = c
	r.log.Info("spawned daemon", "service", name, "pid", c.pid, "path", path, "args", args)
	if name == Containerd {
		// containerd writes no pid file: the agent's lets the next agent
		// find it even while it does not serve its socket.
		if err := writePIDFile(r.pidFile(name), c.pid); err != nil {
			r.log.Warn("write pid file", "service", name, "error", err)
		}
	}
	go r.supervise(c)
	return c, nil
}

// openDaemonLog opens the service's log for appending and returns its size.
func (r *Runtime) openDaemonLog(name string) (*os.File, int64, error) {
	if err := os.MkdirAll(r.cfg.LogDir, 0o755); err != nil {
		return nil, 0, err
	}
	f, err := os.OpenFile(r.logPath(name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, err
	}
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, off, nil
}

func (r *Runtime) logPath(name string) string {
	return filepath.Join(r.cfg.LogDir, name+".log")
}

// supervise waits for the child and delivers its exit: it records how the
// child ended and its last log lines, and, unless the Runtime was stopping
// it, sends the ensure state machine back so the next Ensure restarts it.
// It forgets the child's pid file, which names a process that is gone, and
// sets the service's ready gauge to 0.
func (r *Runtime) supervise(c *child) {
	if c.adopted != nil {
		c.adopted.wait()
		c.adopted.close()
	} else {
		_ = c.cmd.Wait() // the outcome is in ProcessState
		c.state = c.cmd.ProcessState
	}
	if c.logPath != "" {
		c.tail = strings.TrimRight(readTail(c.logPath, c.logStart, exitTailLines), "\n")
	}
	removePIDFileOf(r.pidFile(c.name), c.pid)
	r.mu.Lock()
	current := r.children[c.name] == c
	r.exits[c.name]++
	if current {
		r.ready.WithLabelValues(c.name).Set(0)
	}
	r.mu.Unlock()
	if !c.stopping.Load() {
		r.exitsTotal.WithLabelValues(c.name).Inc()
		r.log.Warn("daemon exited", "service", c.name, "pid", c.pid, "adopted", c.adopted != nil, "status", c.exitStatus(),
			"ran", time.Since(c.started).Round(time.Millisecond).String(), "log_tail", c.tail)
		if current {
			r.ens.invalidate()
		}
	} else {
		r.log.Info("daemon stopped", "service", c.name, "pid", c.pid, "adopted", c.adopted != nil, "status", c.exitStatus())
	}
	close(c.exited)
}

// killWait bounds the wait for a child's end after SIGKILL, which only a
// process stuck in the kernel outlives.
const killWait = 30 * time.Second

// stop ends the child: SIGTERM, then SIGKILL when grace fires or ctx ends
// first. An error says it had to be killed because ctx ended, or that it
// outlived SIGKILL.
func (c *child) stop(ctx context.Context, grace <-chan time.Time) error {
	c.stopping.Store(true)
	if err := c.signal(unix.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s (pid %d): %w", c.name, c.pid, err)
	}
	select {
	case <-c.exited:
		return nil
	case <-grace:
	case <-ctx.Done():
	}
	c.killed.Store(true)
	if err := c.signal(unix.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", c.name, c.pid, err)
	}
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case <-c.exited:
		if ctx.Err() != nil {
			return fmt.Errorf("%s (pid %d) killed: %w", c.name, c.pid, ctx.Err())
		}
		return nil
	case <-t.C:
		return fmt.Errorf("%s (pid %d) still running %s after SIGKILL", c.name, c.pid, killWait)
	}
}

// readTail returns the last n lines of the file at path written at or after
// offset from, or "" when it cannot be read.
func readTail(path string, from int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _, err := tailFrom(f, from, n)
	if err != nil {
		return ""
	}
	return string(b)
}
