// Package initproc is a sandbox's process 1: it reaps the orphans that
// re-parent to it and exits on SIGTERM or SIGINT, which ends the sandbox
// (the kernel kills every other process of a pid namespace whose init
// exits). It is a package of its own so that a test's static init binary
// stays small.
package initproc

import (
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// Main runs the init loop; it never returns.
func Main() {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	// The runtime leaves the init the agent's log as stdout and stderr;
	// nothing in the sandbox should reach that file through /proc/1/fd.
	// (Done after Notify: stdio on /dev/null says the init is ready.)
	if fd, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		for target := 0; target <= 2; target++ {
			if fd != target {
				_ = unix.Dup3(fd, target, 0)
			}
		}
		if fd > 2 {
			unix.Close(fd)
		}
	}
	reap()
	for s := range sigs {
		if s == unix.SIGTERM || s == unix.SIGINT {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited.
func reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
