package dockerproxy

import (
	"errors"
	"net"
	"os"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// pipeSize is the capacity asked of each direction's pipe, and so the most
// one splice moves.
const pipeSize = 1 << 20

// spliceCopy moves src's bytes to dst through a pipe with splice(2), so they
// are not copied through user space, counting them as they go, until src's
// EOF (nil) or an error. handled is false when splice cannot be used for
// this pair (nothing was moved then): the caller copies instead.
func spliceCopy(dst, src net.Conn, counter prometheus.Counter) (written int64, handled bool, err error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return 0, false, nil
	}
	dc, ok := dst.(syscall.Conn)
	if !ok {
		return 0, false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	wc, err := dc.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return 0, false, nil
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	size := pipeSize
	if got, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, pipeSize); err != nil {
		size = 64 << 10 // the default capacity
	} else {
		size = got
	}

	viaBuffer := false // dst refused splice: drain the pipe by read and write
	var buf []byte
	for {
		var n int64
		var serr error
		rerr := rc.Read(func(fd uintptr) bool {
			for {
				n, serr = unix.Splice(int(fd), nil, p[1], nil, size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if serr != unix.EINTR {
					return serr != unix.EAGAIN
				}
			}
		})
		if rerr != nil {
			return written, true, rerr
		}
		if serr != nil {
			if written == 0 && unsupported(serr) {
				return 0, false, nil
			}
			return written, true, os.NewSyscallError("splice", serr)
		}
		if n == 0 {
			return written, true, nil // EOF
		}
		for n > 0 {
			var m int64
			if !viaBuffer {
				werr := wc.Write(func(fd uintptr) bool {
					for {
						m, serr = unix.Splice(p[0], nil, int(fd), nil, int(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
						if serr != unix.EINTR {
							return serr != unix.EAGAIN
						}
					}
				})
				if werr != nil {
					return written, true, werr
				}
				if serr != nil && unsupported(serr) {
					viaBuffer = true
					buf = make([]byte, copyBufferSize)
					continue
				}
				if serr != nil {
					return written, true, os.NewSyscallError("splice", serr)
				}
			} else {
				r, rerr := unix.Read(p[0], buf[:min(int64(len(buf)), n)])
				if rerr != nil {
					return written, true, os.NewSyscallError("read", rerr)
				}
				if _, werr := dst.Write(buf[:r]); werr != nil {
					return written, true, werr
				}
				m = int64(r)
			}
			n -= m
			written += m
			counter.Add(float64(m))
		}
	}
}

// unsupported reports whether splice refused the pair of descriptors.
func unsupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)
}
