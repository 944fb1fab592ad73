package portwatch

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// replyBufSize holds any datagram of a dump: the kernel fills at most
// 32 KiB less its overhead per datagram, however large the reader's buffer.
const replyBufSize = 32 << 10

// diagSocket is a sock_diag netlink socket: it sees the sockets of the
// namespace it was made in, whichever namespace its reader is in.
type diagSocket struct {
	fd      int
	seq     uint32
	queries []query // queries, or queriesV2 once the kernel refused the older request
	req     [maxRequestLen]byte
	buf     []byte // replies; shared by every socket of one watcher, read one at a time
}

// newDiagSocket opens a sock_diag socket in the calling thread's network
// namespace; buf receives its replies.
func newDiagSocket(buf []byte) (*diagSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag netlink socket: %w", err)
	}
	return &diagSocket{fd: fd, queries: queries, buf: buf}, nil
}

// dump appends the TCP and UDP listeners of the socket's namespace to dst.
func (s *diagSocket) dump(dst []Listener) ([]Listener, error) {
	n := len(dst)
	for _, q := range s.queries {
		var err error
		dst, err = s.dumpOne(q, dst)
		if err != nil && q.msgType == tcpdiagGetSock && refused(err) {
			s.queries = queriesV2 // a kernel without the older request
			return s.dump(dst[:n])
		}
		if err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// refused tells whether err is the kernel not knowing a request.
func refused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP)
}

// dumpOne runs one dump request and appends the listeners it answers.
func (s *diagSocket) dumpOne(q query, dst []Listener) ([]Listener, error) {
	s.seq++
	req := encodeRequest(s.req[:], q, s.seq)
	if err := s.send(req); err != nil {
		return dst, fmt.Errorf("send sock_diag request: %w", err)
	}
	dst, err := s.readReply(q, dst)
	if err != nil {
		s.drain()
	}
	return dst, err
}

// readReply reads the reply to the request just sent, to its end.
func (s *diagSocket) readReply(q query, dst []Listener) ([]Listener, error) {
	for {
		n, err := s.recv()
		if err != nil {
			return dst, fmt.Errorf("read sock_diag reply: %w", err)
		}
		if n > len(s.buf) {
			return dst, fmt.Errorf("read sock_diag reply: datagram of %d bytes overflows the %d-byte buffer", n, len(s.buf))
		}
		var done bool
		dst, done, err = parseReply(s.buf[:n], q, s.seq, dst)
		if err != nil || done {
			return dst, err
		}
	}
}

// drain reads and drops what is left of an abandoned dump: until it is
// read, the kernel refuses the socket another dump (EBUSY). Each read of
// a part makes the kernel queue the next one, so the queue empties only
// when the dump ends.
func (s *diagSocket) drain() {
	for range 1 << 16 {
		if _, err := s.recv(); err != nil {
			return
		}
	}
}

// The socket's system calls never wait (MSG_DONTWAIT), and need not:
// netlink runs a dump in the caller's system calls, the first part in the
// send and each next one in the read of the one before, so a part is
// always queued when read. A kernel that did otherwise gets an error
// (EAGAIN) rather than a watcher stuck for good.

// send writes one request to the kernel.
func (s *diagSocket) send(req []byte) error {
	for {
		_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd),
			uintptr(unsafe.Pointer(&req[0])), uintptr(len(req)), unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			return errnoErr(errno)
		}
	}
}

// recv reads one datagram into s.buf and returns its full length, which
// exceeds len(s.buf) if it did not fit (MSG_TRUNC). Nothing queued is
// EAGAIN. No source address is asked for: the x/sys wrappers allocate one.
func (s *diagSocket) recv() (int, error) {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(s.fd),
			uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)),
			unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
		if errno != unix.EINTR {
			return int(n), errnoErr(errno)
		}
	}
}

// errnoErr is errno as an error, nil for 0.
func errnoErr(errno unix.Errno) error {
	if errno == 0 {
		return nil
	}
	return errno
}

func (s *diagSocket) close() { unix.Close(s.fd) }
