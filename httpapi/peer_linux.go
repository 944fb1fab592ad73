package httpapi

import (
	"net"

	"golang.org/x/sys/unix"
)

// peerCred returns a unix socket peer's uid, gid and pid as the kernel
// recorded them when it connected (SO_PEERCRED); -1 each when it cannot.
func peerCred(c net.Conn) (uid, gid, pid int) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, -1, -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, -1, -1
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return -1, -1, -1
	}
	return int(cred.Uid), int(cred.Gid), int(cred.Pid)
}
