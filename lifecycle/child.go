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

// child is one daemon process the Runtime started. One goroutine
// (supervise) waits for it and closes exited when it has ended; the fields
// below exited are set before that and read only after it.
type child struct {
	name     string
	pid      int
	started  time.Time
	logPath  string // "" when the output is discarded
	logStart int64  // the log's size when the child started
	cmd      *exec.Cmd
	cancel   context.CancelFunc // SIGTERM, then SIGKILL after the grace
	stopping atomic.Bool        // the Runtime is stopping it on purpose

	exited chan struct{}
	state  *os.ProcessState
	tail   string // the last lines it logged
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
// Call it only after exited is closed.
func (c *child) exitStatus() string {
	if c.state == nil {
		return "exit status unknown"
	}
	return c.state.String()
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
// <LogDir>/<name>.log, and supervises it. It refuses once Shutdown began.
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
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = env
	if logf != nil {
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(unix.SIGTERM) }
	cmd.WaitDelay = r.cfg.StopGrace
	setProcAttr(cmd)
	err = r.cfg.StartProcess(cmd)
	if logf != nil {
		logf.Close() // the child holds its own descriptor
	}
	if err != nil {
		cancel()
		return nil, err
	}
	c := &child{
		name:     name,
		pid:      cmd.Process.Pid,
		started:  time.Now(),
		logStart: logStart,
		cmd:      cmd,
		cancel:   cancel,
		exited:   make(chan struct{}),
	}
	if logf != nil {
		c.logPath = logf.Name()
	}
	r.children[name] = c
	r.log.Info("spawned daemon", "service", name, "pid", c.pid, "path", path, "args", args)
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
func (r *Runtime) supervise(c *child) {
	_ = c.cmd.Wait() // the outcome is in ProcessState
	c.state = c.cmd.ProcessState
	if c.logPath != "" {
		c.tail = strings.TrimRight(readTail(c.logPath, c.logStart, exitTailLines), "\n")
	}
	r.mu.Lock()
	current := r.children[c.name] == c
	r.mu.Unlock()
	if !c.stopping.Load() {
		r.exitsTotal.WithLabelValues(c.name).Inc()
		r.log.Warn("daemon exited", "service", c.name, "pid", c.pid, "status", c.exitStatus(),
			"ran", time.Since(c.started).Round(time.Millisecond).String(), "log_tail", c.tail)
		if current {
			r.ens.invalidate()
		}
	} else {
		r.log.Info("daemon stopped", "service", c.name, "pid", c.pid, "status", c.exitStatus())
	}
	close(c.exited)
	c.cancel()
}

// stop ends the child: SIGTERM, then SIGKILL after grace (exec's
// WaitDelay does that), or at once when ctx ends first.
func (c *child) stop(ctx context.Context, grace time.Duration) error {
	c.stopping.Store(true)
	c.cancel()
	select {
	case <-c.exited:
		return nil
	case <-ctx.Done():
	}
	// The shutdown's deadline came first: do not wait out the grace.
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", c.name, c.pid, err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.exited:
		return fmt.Errorf("%s (pid %d) killed: %w", c.name, c.pid, ctx.Err())
	case <-t.C:
		return fmt.Errorf("%s (pid %d) still running after SIGKILL", c.name, c.pid)
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
