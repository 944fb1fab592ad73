package oci

import (
	"os/exec"
	"sync"
	"syscall"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// runtimeNice is the nice value the OCI runtime runs at, and so each
// sandbox's init and workloads, which inherit it. Under a burst of
// sandboxes on a small VM the runtime's own work (a runc run or delete
// is 10-30 ms of CPU) took the cores from the agent: a ping waited 21 ms
// at p99 behind 50 clients churning sandboxes, and 6 ms with the runtime
// niced. On an idle machine nice changes nothing; under contention the
// agent's API, dockerd and containers come first, which is what a
// sandbox of unreviewed code should expect.
const runtimeNice = 10

// niceMonitor starts go-runc's commands each in a process group of its
// own and renices that group at once. go-runc builds its commands itself,
// and its Monitor is the one hook it offers. A process group, because
// nice is a thread's: setpriority on the group reaches every thread the
// runtime has started by then, and whatever they start later inherits it.
// Everything else is the default monitor's.
type niceMonitor struct {
	runc.ProcessMonitor
}

func (n niceMonitor) Start(c *exec.Cmd) (chan runc.Exit, error) {
	ownGroup(c)
	ec, err := n.ProcessMonitor.Start(c)
	renice(c, err)
	return ec, err
}

func (n niceMonitor) StartLocked(c *exec.Cmd) (chan runc.Exit, error) {
	ownGroup(c)
	ec, err := n.ProcessMonitor.StartLocked(c)
	renice(c, err)
	return ec, err
}

func ownGroup(c *exec.Cmd) {
	if c.SysProcAttr == nil {
		c.SysProcAttr = &syscall.SysProcAttr{}
	}
	c.SysProcAttr.Setpgid = true
}

func renice(c *exec.Cmd, err error) {
	if err == nil && c.Process != nil {
		// Best effort: a runtime that already exited has no group.
		_ = unix.Setpriority(unix.PRIO_PGRP, c.Process.Pid, runtimeNice)
	}
}

var niceOnce sync.Once

// niceRuntime makes go-runc start the runtime niced, once per process:
// go-runc's monitor is a global of its own.
func niceRuntime() {
	niceOnce.Do(func() { runc.Monitor = niceMonitor{ProcessMonitor: runc.Monitor} })
}
