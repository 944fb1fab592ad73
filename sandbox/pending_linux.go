package sandbox

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// pendingBytes is how many bytes a pipe or terminal holds now (FIONREAD,
// which Linux calls TIOCINQ for both); known is false when it cannot be
// asked.
func pendingBytes(rc syscall.RawConn) (n int, known bool) {
	err := rc.Control(func(fd uintptr) {
		v, err := unix.IoctlGetInt(int(fd), unix.TIOCINQ)
		if err == nil && v >= 0 {
			n, known = v, true
		}
	})
	return n, known && err == nil
}
