package oci

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// pidWatch is a process the agent did not start (a sandbox's init, whose
// parent was the runtime) watched through a pidfd: exited closes when it
// exits. A pidfd cannot be fooled by pid reuse.
type pidWatch struct {
	pid    int
	file   *os.File // the pidfd, in Go's poller
	exited chan struct{}
}

// watchPid opens a pidfd on pid and closes exited when the process exits.
// A process that is already gone gives a closed channel.
func watchPid(pid int) (*pidWatch, error) {
	w := &pidWatch{pid: pid, exited: make(chan struct{})}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		close(w.exited)
		return w, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	unix.CloseOnExec(fd)
	w.file = os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
	rc, err := w.file.SyscallConn()
	if err != nil {
		w.file.Close()
		return nil, err
	}
	go func() {
		// Read waits (in the poller) until the pidfd is readable: the
		// process has exited. A closed file ends it without an exit.
		err := rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd)) })
		if err == nil {
			close(w.exited)
		}
	}()
	return w, nil
}

// pidfdExited polls a pidfd without blocking.
func pidfdExited(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0 && pfd[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0
}

// wait waits for the exit, up to d; it reports whether the process exited.
func (w *pidWatch) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.exited:
		return true
	case <-t.C:
		return false
	}
}

func (w *pidWatch) close() {
	if w.file != nil {
		w.file.Close()
	}
}

// pidNamespace names a process's pid namespace ("pid:[4026531836]").
func pidNamespace(pid int) (string, error) {
	return os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/pid")
}

// signalInNamespace sends sig to pid if the process lives in pid namespace
// ns (so a reused pid outside the sandbox is never hit), through a pidfd
// so the check and the signal concern the same process. A process that is
// gone is no error.
func signalInNamespace(pid int, ns string, sig unix.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	got, err := pidNamespace(pid)
	if err != nil {
		return nil // gone meanwhile
	}
	if got != ns {
		return fmt.Errorf("pid %d is not in the sandbox (namespace %s, want %s)", pid, got, ns)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d: %w", pid, err)
	}
	return nil
}

// children lists the children of pid (/proc/<pid>/task/<tid>/children).
func children(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	for _, t := range tasks {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// signalTree sends sig to pid and all its descendants in namespace ns.
// Each process is stopped (SIGSTOP) before its children are listed, so it
// cannot fork one the walk would miss; for any signal but SIGKILL they are
// all continued (SIGCONT) once signalled, so they act on it.
func signalTree(pid int, ns string, sig unix.Signal) error {
	var errs []error
	queue := []int{pid}
	seen := map[int]bool{}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		if err := signalInNamespace(p, ns, unix.SIGSTOP); err != nil {
			errs = append(errs, err)
			continue
		}
		queue = append(queue, children(p)...)
		errs = append(errs, signalInNamespace(p, ns, sig))
	}
	if sig != unix.SIGKILL {
		for p := range seen {
			_ = signalInNamespace(p, ns, unix.SIGCONT) // one that is gone needs none
		}
	}
	return errors.Join(errs...)
}
