package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/sandbox/initproc"
)

// initSockFile is the socket in a bundle through which the sandbox's init
// starts processes for the agent (see initproc/protocol.go).
const initSockFile = "init.sock"

// initReplyTimeout bounds the wait for the init's answer to a Start.
const initReplyTimeout = 30 * time.Second

// maxInitStart is the largest Start the agent sends the init: a
// SOCK_SEQPACKET message must fit the socket's send buffer (about 208 KiB
// by default). A larger one (a huge environment) goes through the runtime.
const maxInitStart = 128 << 10

// maxSockPath is the longest path a unix socket can be bound at, with its
// terminating NUL (sun_path is 108 bytes).
const maxSockPath = 107

// listenForInit binds the bundle's init socket and returns the listening
// descriptor, for the init as its fd 3. A bundle path too long for a
// socket gets none (nil, nil): processes then start through the runtime.
func listenForInit(dir string) (*os.File, error) {
	path := filepath.Join(dir, initSockFile)
	if len(path) > maxSockPath {
		return nil, nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("init socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the init keeps listening on it
	f, err := ln.File()
	ln.Close()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("init socket: %w", err)
	}
	return f, nil
}

// dialInit connects to a sandbox's init; nil when its init takes no
// processes (one made by an earlier agent, or a bundle path too long).
func dialInit(dir string) *net.UnixConn {
	path := filepath.Join(dir, initSockFile)
	if len(path) > maxSockPath {
		return nil
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil
	}
	return c
}

// startViaInit starts a process through the sandbox's init on c: no runtime
// process at all, so it starts in about a millisecond, its exit status
// comes the moment it exits whatever its background children do with its
// output, and a terminal works on every runtime (the init makes it in the
// sandbox's devpts and passes the agent its master).
//
// msg is the encoded initproc.Start; tty says whether it asks for a
// terminal.
func (b *Backend) startViaInit(c *net.UnixConn, box *container, msg []byte, tty bool, stdin io.Reader) (_ *process, err error) {
	e := &process{box: box, ctl: c, done: make(chan struct{})}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	var child []*os.File // the process's stdin, stdout, stderr
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	if !tty {
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		in := devnull
		if stdin != nil {
			r, w, err := os.Pipe()
			if err != nil {
				devnull.Close()
				return nil, err
			}
			devnull.Close()
			in, e.stdinW = r, w
		}
		child = append(child, in)
		var w *os.File
		if e.stdout, w, err = outputPipe(); err != nil {
			return nil, err
		}
		child = append(child, w)
		if e.stderr, w, err = outputPipe(); err != nil {
			return nil, err
		}
		child = append(child, w)
	}
	var oob []byte
	if len(child) > 0 {
		fds := make([]int, len(child))
		for i, f := range child {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(msg, oob, nil); err != nil {
		return nil, fmt.Errorf("send the process to the sandbox's init: %w", err)
	}
	// The init answers at once; one that does not (frozen, or out of
	// memory) must not hold the run, and the stop or shutdown behind it.
	_ = c.SetReadDeadline(time.Now().Add(initReplyTimeout))
	r, master, err := e.readFirstReply()
	if err != nil {
		return nil, err
	}
	_ = c.SetReadDeadline(time.Time{})
	if tty {
		if master == nil {
			return nil, fmt.Errorf("the sandbox's init could not make a terminal (answered %+v)", r)
		}
		if e.term, err = console.ConsoleFromFile(master); err != nil {
			master.Close()
			return nil, fmt.Errorf("terminal: %w", err)
		}
		if e.stdout, err = pollableDup(master.Fd()); err != nil {
			return nil, err
		}
	} else if master != nil {
		master.Close()
	}
	switch {
	case r.Exited: // it could not start; it said why on its stderr
		e.code = r.Code
		close(e.done)
	case r.Started:
		e.nsPid = r.Pid
		go e.waitInit()
	default:
		return nil, fmt.Errorf("the sandbox's init answered %+v", r)
	}
	if stdin != nil {
		go e.copyStdin(stdin)
	}
	return e, nil
}

// readFirstReply reads the init's answer to a Start, with the terminal's
// master when it made one.
func (e *process) readFirstReply() (initproc.Reply, *os.File, error) {
	var r initproc.Reply
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := e.ctl.ReadMsgUnix(buf, oob)
	if err != nil {
		return r, nil, fmt.Errorf("the sandbox's init hung up (has it died?): %w", err)
	}
	var master *os.File
	for i, f := range initproc.ReceivedFiles(oob[:oobn]) {
		if i == 0 {
			master = f
		} else {
			f.Close()
		}
	}
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		if master != nil {
			master.Close()
		}
		return r, nil, fmt.Errorf("the sandbox's init: %w", err)
	}
	return r, master, nil
}

// readReply reads one message of the init.
func (e *process) readReply() (initproc.Reply, error) {
	var r initproc.Reply
	buf := make([]byte, 4096)
	n, err := e.ctl.Read(buf)
	if err != nil {
		return r, fmt.Errorf("the sandbox's init hung up (has it died?): %w", err)
	}
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		return r, fmt.Errorf("the sandbox's init: %w", err)
	}
	return r, nil
}

// waitInit waits for the init's word of the exit.
func (e *process) waitInit() {
	defer close(e.done)
	for {
		r, err := e.readReply()
		if err != nil {
			e.code, e.err = -1, err
			return
		}
		if r.Exited {
			e.code = r.Code
			return
		}
	}
}

// signalInit asks the init to signal the process (a tree kill is
// signalTree's, from the host: see Signal).
func (e *process) signalInit(sig unix.Signal) error {
	select {
	case <-e.done:
		return nil // gone already
	default:
	}
	msg, _ := json.Marshal(initproc.Signal{Signal: int(sig)})
	e.ctlMu.Lock()
	defer e.ctlMu.Unlock()
	if _, err := e.ctl.Write(msg); err != nil {
		select {
		case <-e.done:
			return nil
		default:
		}
		return fmt.Errorf("signal through the sandbox's init: %w", err)
	}
	return nil
}

// initChild finds the host pid of the sandbox init's child whose pid in
// the sandbox is nsPid; 0 when there is none (it has exited).
func initChild(initPid, nsPid int) int {
	for _, c := range children(initPid) {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(c) + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
				f := strings.Fields(rest)
				if len(f) > 0 && f[len(f)-1] == strconv.Itoa(nsPid) {
					return c
				}
				break
			}
		}
	}
	return 0
}

// pollableDup duplicates fd as a non-blocking file in Go's poller, so reads
// take deadlines like a pipe's.
func pollableDup(fd uintptr) (*os.File, error) {
	d, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup the terminal: %w", err)
	}
	if err := unix.SetNonblock(d, true); err != nil {
		unix.Close(d)
		return nil, err
	}
	return os.NewFile(uintptr(d), "pty"), nil
}
