// Package initproc is a sandbox's process 1: it reaps the orphans that
// re-parent to it, starts the agent's processes (see protocol.go), and
// exits on SIGTERM or SIGINT, which ends the sandbox (the kernel kills
// every other process of a pid namespace whose init exits). It is a
// package of its own so that a test's static init binary stays small.
package initproc

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

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
	// Not dumpable: a process of the sandbox, root or not, may not
	// ptrace the init or take its descriptors (the agent's socket).
	_ = unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	s := &server{procs: map[int]*conn{}}
	if ln := inheritedListener(); ln != nil {
		go s.serve(ln)
	}
	s.reap()
	for sig := range sigs {
		if sig == unix.SIGTERM || sig == unix.SIGINT {
			os.Exit(0)
		}
		s.reap()
	}
}

// inheritedListener is the agent's listening socket at ListenFd, or nil
// when the init was started without one.
func inheritedListener() *net.UnixListener {
	typ, err := unix.GetsockoptInt(ListenFd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_SEQPACKET {
		return nil
	}
	f := os.NewFile(ListenFd, "agent")
	ln, err := net.FileListener(f) // a duplicate, close-on-exec
	f.Close()
	if err != nil {
		return nil
	}
	ul, _ := ln.(*net.UnixListener)
	return ul
}

// server starts the agent's processes and reports their exits.
type server struct {
	// mu is held while a process is started and while children are
	// reaped, so that no exit is reaped before its process is in procs.
	mu    sync.Mutex
	procs map[int]*conn // the processes started for the agent, by pid
}

// conn is one agent connection: one process.
type conn struct {
	c      *net.UnixConn
	wmu    sync.Mutex
	pid    int
	done   bool
	master *os.File // a terminal's master, until the first reply takes it to the agent
}

func (c *conn) send(r Reply) {
	data, _ := json.Marshal(r)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.master != nil {
		// The first reply hands the agent the terminal's master.
		_, _, _ = c.c.WriteMsgUnix(data, unix.UnixRights(int(c.master.Fd())), nil)
		c.master.Close()
		c.master = nil
		return
	}
	_, _ = c.c.Write(data)
}

// reap collects every child that has exited and tells the agent of the
// exits of its processes.
func (s *server) reap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		if c := s.procs[pid]; c != nil {
			delete(s.procs, pid)
			code := ws.ExitStatus()
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			c.exited(code)
		}
	}
}

// exited reports the process's exit and ends the connection.
func (c *conn) exited(code int) {
	c.wmu.Lock()
	done := c.done
	c.done = true
	c.wmu.Unlock()
	if done {
		return
	}
	c.send(Reply{Exited: true, Code: code})
	_ = c.c.Close()
}

func (s *server) serve(ln *net.UnixListener) {
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or memory, say: try again later, as
			// net/http does, rather than leave the agent's connections
			// waiting in the backlog for ever.
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		go s.handle(c)
	}
}

// handle serves one connection: a Start, then Signals until the process
// exits or the agent hangs up.
func (s *server) handle(uc *net.UnixConn) {
	c := &conn{c: uc}
	// Only the agent may connect: a peer outside the sandbox's pid
	// namespace shows as pid 0.
	if !fromOutside(uc) {
		uc.Close()
		return
	}
	buf := make([]byte, MaxMessage)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		uc.Close()
		return
	}
	files := ReceivedFiles(oob[:oobn])
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}
	var st Start
	if err := json.Unmarshal(buf[:n], &st); err != nil || len(st.Args) == 0 || len(files) != 3 && !st.TTY || len(files) != 0 && st.TTY {
		closeFiles()
		uc.Close()
		return
	}
	if st.TTY {
		// The terminal is made here, in the sandbox's own devpts, so
		// that ttyname, tty, sudo and the like find it.
		master, slave, err := openPty(st.Width, st.Height)
		if err != nil {
			c.exited(ExitNotStarted) // no terminal to say why on; the agent does
			return
		}
		c.master = master
		files = []*os.File{slave, slave, slave}
	}
	err = s.start(c, st, files)
	if err != nil {
		fmt.Fprintf(files[2], "%v\n", err)
	}
	// The process has its own copies: the agent sees the end of its
	// output when it and its children have closed theirs.
	closeFiles()
	if err != nil {
		c.exited(ExitNotStarted)
		return
	}
	for {
		n, err := uc.Read(buf)
		if err != nil {
			return // the process exited (the reaper closed it), or the agent left
		}
		var sig Signal
		if json.Unmarshal(buf[:n], &sig) == nil && sig.Signal > 0 {
			s.signal(c, unix.Signal(sig.Signal))
		}
	}
}

// start starts the process and registers it before any exit can be reaped.
func (s *server) start(c *conn, st Start, files []*os.File) error {
	path, err := lookPath(st.Args[0], st.Env)
	if err != nil {
		return err
	}
	attr := &os.ProcAttr{
		Dir:   st.Dir,
		Env:   st.Env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			Setsid:     true,
			Setctty:    st.TTY,
			Ctty:       0,
			Credential: &syscall.Credential{Uid: st.UID, Gid: st.GID, Groups: st.Groups},
		},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := os.StartProcess(path, st.Args, attr)
	if err != nil {
		return fmt.Errorf("exec %q: %w", st.Args[0], unwrapPathError(err))
	}
	c.pid = p.Pid
	s.procs[p.Pid] = c
	c.send(Reply{Started: true, Pid: p.Pid})
	_ = p.Release() // the reaper waits for it, not os.Process (Release also sets p.Pid to -1)
	return nil
}

func unwrapPathError(err error) error {
	if pe := (*os.PathError)(nil); errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// openPty opens a new terminal in the sandbox's devpts, of the size given
// (when not zero).
func openPty(width, height uint16) (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	master = os.NewFile(uintptr(fd), "ptmx")
	defer func() {
		if err != nil {
			master.Close()
		}
	}()
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		return nil, nil, err
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		return nil, nil, err
	}
	if width > 0 && height > 0 {
		if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Col: width, Row: height}); err != nil {
			return nil, nil, err
		}
	}
	sfd, err := unix.Open("/dev/pts/"+strconv.Itoa(n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return master, os.NewFile(uintptr(sfd), "pts"), nil
}

// lookPath finds file as a shell would, in the process's own PATH.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec %q: executable file not found in $PATH", file)
}

// ReceivedFiles takes the descriptors passed with a message (SCM_RIGHTS),
// close-on-exec.
func ReceivedFiles(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "fd"+strconv.Itoa(fd)))
		}
	}
	return files
}

// fromOutside reports whether the peer is outside the init's pid
// namespace, as the agent is.
func fromOutside(uc *net.UnixConn) bool {
	rc, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	_ = rc.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	return err == nil && cred != nil && cred.Pid == 0
}

// signal signals c's process unless it has been reaped already (its pid
// could then be another process's).
func (s *server) signal(c *conn, sig unix.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs[c.pid] == c {
		_ = unix.Kill(c.pid, sig)
	}
}
