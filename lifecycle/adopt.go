package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Daemons left by an earlier agent. An agent that dies without stopping
// its daemons (kill -9, the OOM killer) leaves containerd and dockerd
// running: they have process groups of their own, and keep their sockets,
// logs and pid files. The next agent adopts them rather than stopping
// them, so the user's containers go on running: it supervises them
// through a pidfd (they are not its children, so wait(2) cannot), reports
// them in Status, answers "reused" to the ensure that finds them serving,
// and stops them on Shutdown as it stops its own. A process is adopted
// only when it is proven to be the daemon: its executable is the
// configured binary and its arguments name the configured socket, checked
// again once the pidfd is open, so a reused pid is never signalled.

// identity is what proves a process is the service's daemon as this
// Runtime runs it: the configured binary, started with these arguments.
func (r *Runtime) identity(service string) (binary string, socketArgs []string) {
	if service == Containerd {
		return filepath.Join(r.cfg.RuntimeBinDir, "containerd"), []string{"--address", r.cfg.ContainerdSocket}
	}
	return filepath.Join(r.cfg.RuntimeBinDir, "dockerd"), []string{"--host=unix://" + r.cfg.DockerSocket}
}

// socket is the service's unix socket.
func (r *Runtime) socket(service string) string {
	if service == Containerd {
		return r.cfg.ContainerdSocket
	}
	return r.cfg.DockerSocket
}

// pidFile is where the service's pid is recorded while it runs: containerd
// has no pid file of its own, so the agent writes one in containerd's state
// directory; dockerd writes its own (--pidfile) in its exec root.
func (r *Runtime) pidFile(service string) string {
	if service == Containerd {
		return filepath.Join(r.cfg.ContainerdState, "containerd.pid")
	}
	return filepath.Join(r.cfg.DockerExecRoot, "docker.pid")
}

// runsBinary reports whether the live process pid runs the executable at
// binary (the same file, after symbolic links).
func runsBinary(pid int, binary string) error {
	exe, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	bin, err := os.Stat(binary)
	if err != nil {
		return err
	}
	if !os.SameFile(exe, bin) {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		return fmt.Errorf("pid %d runs %s, not %s", pid, target, binary)
	}
	return nil
}

// verifyDaemon checks that pid is a live process that is the service's
// daemon (identity); the error says why not. A process that has ended
// (a zombie too: it has no executable left) fails runsBinary.
func (r *Runtime) verifyDaemon(service string, pid int) error {
	binary, want := r.identity(service)
	if err := runsBinary(pid, binary); err != nil {
		return err
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	if !hasArgs(splitCmdline(cmdline), want) {
		return fmt.Errorf("pid %d was not started with %s", pid, strings.Join(want, " "))
	}
	return nil
}

// adoptStrays adopts the daemons of each service that has no live child,
// when they can be proven to be the service's daemon. It runs when the
// Runtime is built (so Status and Shutdown know them from the start) and
// before each start (so a daemon is never started twice).
func (r *Runtime) adoptStrays(ctx context.Context) {
	for _, name := range []string{Containerd, Dockerd} {
		r.mu.Lock()
		c, closed := r.children[name], r.closed
		r.mu.Unlock()
		if closed {
			return
		}
		if c == nil || c.hasExited() {
			r.adoptStray(ctx, name)
		}
	}
}

// adoptStray looks for the service's daemon where an earlier agent left
// it: the process that listens on its socket, and the one its pid file
// names. It adopts the first that is proven to be the daemon. A pid file
// that names no daemon at all is stale (its daemon died with the agent,
// or was killed) and is removed, so that the next dockerd does not refuse
// to start over a reused pid.
func (r *Runtime) adoptStray(ctx context.Context, service string) {
	var candidates []int
	peerCtx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
	pid, err := socketPeer(peerCtx, r.socket(service))
	cancel()
	if err == nil {
		candidates = append(candidates, pid)
	}
	path := r.pidFile(service)
	filePID, ferr := readPIDFile(path)
	if ferr == nil && !slices.Contains(candidates, filePID) {
		candidates = append(candidates, filePID)
	}
	for _, pid := range candidates {
		if pid == os.Getpid() {
			continue
		}
		// The pidfd pins the process that has pid now, so proving it
		// after the open proves the process held: a pid reused before the
		// open is proven as what it is now, and cannot be reused after.
		h, err := openPidfd(pid)
		if errors.Is(err, unix.ESRCH) {
			continue // gone
		}
		if err != nil {
			r.log.Warn("cannot adopt daemon; left alone", "service", service, "pid", pid, "error", err)
			continue
		}
		if err := r.verifyDaemon(service, pid); err != nil || h.exited() {
			if err != nil {
				r.log.Info("not adopting a process", "service", service, "pid", pid, "reason", err.Error())
			}
			h.close()
			continue
		}
		if !r.adopt(service, pid, h) {
			h.close()
		}
		return
	}
	switch {
	case ferr == nil && r.stalePID(service, filePID):
		r.log.Info("removing a stale pid file", "service", service, "path", path, "pid", filePID)
		os.Remove(path)
	case ferr != nil && !errors.Is(ferr, fs.ErrNotExist):
		r.log.Warn("removing an unreadable pid file", "service", service, "error", ferr)
		os.Remove(path)
	}
}

// stalePID reports whether a pid file's pid names no daemon of the
// service: no process with an executable (none at all, a zombie, a kernel
// thread), or one that runs neither the configured binary nor one of the
// daemon's name (a reused pid). A daemon of the service that is not
// provably the agent's keeps its pid file.
func (r *Runtime) stalePID(service string, pid int) bool {
	binary, _ := r.identity(service)
	if runsBinary(pid, binary) == nil {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != filepath.Base(binary)
}

// adopt makes the process behind h the service's child, supervised as
// the Runtime's own are. It refuses once Shutdown began, or when a child
// of the service runs already.
func (r *Runtime) adopt(service string, pid int, h *pidfd) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.children[service]; r.closed || (c != nil && !c.hasExited()) {
		return false
	}
	c := &child{
		name:    service,
		pid:     pid,
		started: time.Now(),
		adopted: h,
		exited:  make(chan struct{}),
	}
	// Its output still goes to the log the earlier agent opened for it.
	if exists(r.logPath(service)) {
		c.logPath = r.logPath(service)
	}
	r.children[service] = c
	r.log.Info("adopted daemon left by an earlier agent", "service", service, "pid", pid)
	go r.supervise(c)
	return true
}

// adoptedNotes says which of the running daemons were adopted, for the
// ensure's message.
func (r *Runtime) adoptedNotes() []string {
	var notes []string
	for _, name := range []string{Containerd, Dockerd} {
		r.mu.Lock()
		c := r.children[name]
		r.mu.Unlock()
		if c != nil && c.adopted != nil && !c.hasExited() {
			notes = append(notes, fmt.Sprintf("adopted %s (pid=%d) left running by an earlier agent", name, c.pid))
		}
	}
	return notes
}
