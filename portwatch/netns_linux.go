package portwatch

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// nsSockets reads the listeners of one network namespace: a sock_diag
// socket for the dumps and the namespace's sockstat files for its
// counters, all opened inside the namespace, where they stay bound
// whichever thread reads them. Each holds the namespace alive: close them
// when it goes.
type nsSockets struct {
	diag  *diagSocket
	stats []int // sockstat and sockstat6 fds; none where /proc has no such file
	last  counters
	valid bool // last is what the counters were before the last good dump
}

var _ dumper = (*nsSockets)(nil)

// sockstatFiles are read through thread-self: /proc/self/net is the main
// thread's namespace, not the calling one's.
var sockstatFiles = [...]string{"/proc/thread-self/net/sockstat", "/proc/thread-self/net/sockstat6"}

// newNsSockets opens them in the calling thread's network namespace; buf
// receives sock_diag replies and sockstat text. A namespace whose
// counters cannot be read (no /proc) is dumped every scan.
func newNsSockets(buf []byte) (*nsSockets, error) {
	d, err := newDiagSocket(buf)
	if err != nil {
		return nil, err
	}
	n := &nsSockets{diag: d}
	for _, name := range sockstatFiles {
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			continue // no IPv6, or no /proc at all
		}
		if err != nil {
			n.close()
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		n.stats = append(n.stats, fd)
	}
	return n, nil
}

// newNsSocketsIn opens them in the network namespace of nsfd. It enters
// the namespace on a thread of its own that it never gives back, so the
// thread ends with the goroutine, namespace and all, and no other
// goroutine ever runs in a sandbox's namespace.
func newNsSocketsIn(nsfd int, buf []byte) (*nsSockets, error) {
	type result struct {
		n   *nsSockets
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		n, err := newNsSockets(buf)
		done <- result{n, err}
	}()
	r := <-done
	return r.n, r.err
}

// gated tells whether the namespace's counters can be read, so that dump
// can skip a namespace whose counters have not moved.
func (n *nsSockets) gated() bool { return len(n.stats) > 0 }

// dump appends the namespace's listeners to dst, unless force is false
// and its counters are what they were before the last dump: then nothing
// was bound, listened on or closed since, and it reports !fresh. The
// counters are read before the dump, so a change while it runs moves them
// again for the next scan.
func (n *nsSockets) dump(dst []Listener, force bool) ([]Listener, bool, error) {
	c, ok := n.counters()
	if ok && !force && n.valid && c == n.last {
		return dst, false, nil
	}
	dst, err := n.diag.dump(dst)
	n.last, n.valid = c, ok && err == nil
	if err != nil {
		return dst, false, err
	}
	return dst, true, nil
}

// counters reads the sockstat files; false if any cannot be read.
func (n *nsSockets) counters() (counters, bool) {
	var c counters
	if len(n.stats) == 0 {
		return c, false
	}
	buf := n.diag.buf
	for _, fd := range n.stats {
		k, err := unix.Pread(fd, buf, 0)
		if err != nil || k == len(buf) || !parseSockstat(buf[:k], &c) {
			return c, false
		}
	}
	return c, true
}

func (n *nsSockets) close() {
	n.diag.close()
	for _, fd := range n.stats {
		unix.Close(fd)
	}
}
