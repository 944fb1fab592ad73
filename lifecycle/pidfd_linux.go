package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// pidfd is a handle on a process that is not the agent's child (a daemon
// adopted from an earlier agent), by pidfd_open(2): its signals go to that
// process and no other, even once its pid is reused, and its exit can be
// waited for by poll(2), where wait(2) would refuse a non-child.
type pidfd struct {
	pid int

	mu     sync.Mutex // guards fd against its close while a signal uses it
	fd     int
	closed bool
}

// openPidfd opens a handle on pid.
func openPidfd(pid int) (*pidfd, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	unix.CloseOnExec(fd)
	return &pidfd{pid: pid, fd: fd}, nil
}

// signal sends sig to the process; os.ErrProcessDone once it has ended.
func (p *pidfd) signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return os.ErrProcessDone
	}
	err := unix.PidfdSendSignal(p.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return os.ErrProcessDone
	}
	if err != nil {
		return fmt.Errorf("signal pid %d: %w", p.pid, err)
	}
	return nil
}

// exited reports, without blocking, whether the process has ended.
func (p *pidfd) exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return true
	}
	return pollPidfd(p.fd, 0)
}

// wait blocks until the process has ended. The pidfd becomes readable
// then (a zombie counts: it has ended). Only the owner calls it, once,
// and closes the handle afterwards: the descriptor stays open meanwhile.
func (p *pidfd) wait() {
	for !pollPidfd(p.fd, -1) {
	}
}

// close releases the handle.
func (p *pidfd) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		unix.Close(p.fd)
	}
}

// pollPidfd polls fd for the process's exit, for at most timeout
// milliseconds (-1: no limit); it answers false on EINTR, to be asked
// again. An error other than EINTR (a descriptor that is not a pidfd)
// counts as an exit, so that a broken handle never stays "running".
func pollPidfd(fd, timeout int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, timeout)
	if errors.Is(err, unix.EINTR) {
		return false
	}
	return err != nil || (n > 0 && fds[0].Revents != 0)
}

// socketPeer returns the pid of the process that listens on the unix
// socket at path: the peer credentials (SO_PEERCRED) of a connection to
// it are those of the listener when it called listen(2). ctx bounds the
// connect.
func socketPeer(ctx context.Context, path string) (int, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("SO_PEERCRED of %s: %w", path, cerr)
	}
	if cred.Pid <= 0 {
		return 0, fmt.Errorf("SO_PEERCRED of %s: no pid (the listener is in another pid namespace)", path)
	}
	return int(cred.Pid), nil
}
