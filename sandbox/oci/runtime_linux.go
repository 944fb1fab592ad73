package oci

// The OCI runtime: finding it, running it, and what it inherits.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/arcbox/arcbox-agent/sandbox"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// findRuntime resolves Config.Runtime to a binary and its kind.
func findRuntime(want string) (path, name string, err error) {
	switch want {
	case "":
		order := []string{"crun", "runc"}
		if hybridCgroupRefusedByCrun() {
			order = []string{"runc", "crun"}
		}
		for _, n := range order {
			if p, err := exec.LookPath(n); err == nil {
				return p, n, nil
			}
		}
		return "", "", sandbox.Errorf(sandbox.ErrUnavailable, "no OCI runtime: neither crun nor runc is on PATH")
	case "runc", "crun":
		p, err := exec.LookPath(want)
		if err != nil {
			return "", "", sandbox.Errorf(sandbox.ErrUnavailable, "OCI runtime %s: %w", want, err)
		}
		return p, want, nil
	default:
		st, err := os.Stat(want)
		if err != nil {
			return "", "", sandbox.Errorf(sandbox.ErrUnavailable, "OCI runtime %s: %w", want, err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return "", "", sandbox.Errorf(sandbox.ErrUnavailable, "OCI runtime %s is not an executable file", want)
		}
		return want, filepath.Base(want), nil
	}
}

// isCgroup2 reports whether dir is a cgroup2 mount.
func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// hybridCgroupRefusedByCrun reports a hybrid cgroup layout whose cgroup2
// part has controllers: crun refuses to run there ("cgroups in hybrid mode
// not supported"), runc does not.
func hybridCgroupRefusedByCrun() bool {
	if isCgroup2("/sys/fs/cgroup") || !isCgroup2("/sys/fs/cgroup/unified") {
		return false
	}
	data, err := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
	return err == nil && len(bytes.TrimSpace(data)) > 0
}

// runtimeRun is `runc run --detach`: create and start in one call. The
// runtime's output (its errors) goes to runtime.log; the init inherits
// /dev/null and that log, and swaps the log for /dev/null when it starts,
// and the listening init socket as its fd 3 (listenForInit).
func (b *Backend) runtimeRun(ctx context.Context, id, dir, pidFile string) error {
	logPath := filepath.Join(dir, runtimeLogFile)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	sock, err := listenForInit(dir)
	if err != nil {
		return err
	}
	opts := &runc.CreateOpts{
		IO:      &fileIO{stdin: devnull, stdout: logf, stderr: logf},
		PidFile: pidFile,
		Detach:  true,
		NoPivot: b.noPivot,
	}
	if sock != nil {
		defer sock.Close()
		opts.ExtraFiles = []*os.File{sock} // the init's fd 3
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeTimeout)
	defer cancel()
	_, err = b.rt.Run(rctx, id, dir, opts)
	if err != nil {
		return fmt.Errorf("%s run: %w: %s", b.runtimeName, err, logTail(logPath))
	}
	return nil
}

// logTail is the end of a runtime log, for an error message.
func logTail(p string) string {
	data, _ := os.ReadFile(p)
	data = bytes.TrimSpace(data)
	if len(data) > 2048 {
		data = data[len(data)-2048:]
	}
	return string(data)
}

func readPidFile(p string) (int, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: bad pid %q", p, data)
	}
	return pid, nil
}

// gone reports whether the runtime keeps no state of container id, which
// is what its errors mean when it says there is no such container: runc
// keeps <root>/<id>/state.json and crun <root>/<id>/status. A directory
// without either is a create that was cut short before it made one (runc
// calls that an aborted start): no container either, whose directory
// clearLeftover removes. Deciding by the state on disk, not by the text of
// an error (go-runc has no typed one), holds whatever words a runtime
// version uses.
func (b *Backend) gone(id string) bool {
	for _, f := range []string{"state.json", "status"} {
		if _, err := os.Lstat(filepath.Join(b.rt.Root, id, f)); !errors.Is(err, fs.ErrNotExist) {
			return false
		}
	}
	return true
}

// clearLeftover removes what a create cut short left of container id in
// the runtime's root, so a new container of that id can be made.
func (b *Backend) clearLeftover(id string) error {
	if !b.gone(id) {
		return nil
	}
	return os.RemoveAll(filepath.Join(b.rt.Root, id))
}

// fileIO gives the runtime process the files it is to use as its stdio,
// as they are: no copying goroutines, nothing else inherited. The files in
// closeAfterStart (the child's ends of pipes) are closed in the agent once
// the runtime has started, so the agent sees EOF when the process is done.
type fileIO struct {
	stdin, stdout, stderr *os.File
	closeAfterStart       []*os.File
}

var (
	_ runc.IO          = (*fileIO)(nil)
	_ runc.StartCloser = (*fileIO)(nil)
)

func (f *fileIO) Close() error { return f.CloseAfterStart() }

func (f *fileIO) Stdin() io.WriteCloser { return nil }

func (f *fileIO) Stdout() io.ReadCloser { return nil }

func (f *fileIO) Stderr() io.ReadCloser { return nil }

func (f *fileIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = f.stdin, f.stdout, f.stderr
}

// CloseAfterStart closes the child's ends.
func (f *fileIO) CloseAfterStart() error {
	var errs []error
	for _, c := range f.closeAfterStart {
		errs = append(errs, c.Close())
	}
	f.closeAfterStart = nil
	return errors.Join(errs...)
}

// markInheritedCloexec sets close-on-exec on every descriptor past stdio.
// Go opens its own that way, but descriptors inherited from whoever
// started the agent are not, and os/exec would pass them on to the OCI
// runtime, from where a runtime bug could let them into a sandbox
// (CVE-2024-21626). It returns how many it changed.
func markInheritedCloexec() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, ent := range entries {
		fd, err := strconv.Atoi(ent.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC); err == nil {
			n++
		}
	}
	return n
}
