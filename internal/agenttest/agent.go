//go:build linux

package agenttest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// ErrNoExit is Terminate's error for an agent that did not exit in time
// after SIGTERM, and was killed.
var ErrNoExit = errors.New("the agent did not exit")

// Agent is the binary Build made, run as a process of the test's with its
// files under Dir: its log (stdout and stderr, appended across starts)
// and, with Flags(Dir), everything else. Started again, it keeps Dir, and
// so its state. It is ended by its PID only.
type Agent struct {
	Dir  string   // the agent's files; Start makes it when missing
	Args []string // its flags, usually Flags(Dir, ...)
	Env  []string // its environment beyond the test's
	// ReadyPath is what Start asks with GET over Socket(Dir) until Ready,
	// given the status, says the agent has started (true) or will not
	// (an error). By default: /readyz, ready once it answers 200.
	ReadyPath string
	Ready     func(status int) (bool, error)
	// StartTimeout bounds Start's wait, 2 minutes by default: it only
	// ends a test that would otherwise hang.
	StartTimeout time.Duration

	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has been waited for
	waitErr error         // cmd.Wait's answer, once exited is closed
	logFrom int64         // where this run's output begins in the log
	tr      *http.Transport
}

// Path is name under the agent's directory.
func (a *Agent) Path(name string) string { return filepath.Join(a.Dir, name) }

// Socket is the control API's unix socket (see Flags).
func (a *Agent) Socket() string { return Socket(a.Dir) }

// LogPath is the agent's output, appended across starts.
func (a *Agent) LogPath() string { return a.Path("agent.log") }

// Start runs the agent and waits until it is ready (see ReadyPath). An
// agent that exits, is not ready in time, or will not be, is killed, and
// the error shows the end of its log.
func (a *Agent) Start() error {
	bin, err := Build(false)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(a.LogPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "---- %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(a.Args, " "))
	if a.logFrom, err = logf.Seek(0, io.SeekCurrent); err != nil {
		return err
	}
	cmd := exec.Command(bin, a.Args...)
	// A race-enabled agent would otherwise sleep a second before exiting.
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), a.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = a.Dir
	// Should the test binary die (a timeout's panic), the agent goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	a.cmd, a.exited = cmd, make(chan struct{})
	go func() { a.waitErr = cmd.Wait(); close(a.exited) }()
	a.tr = UnixTransport(a.Socket())
	if err := a.waitReady(); err != nil {
		_ = a.Kill()
		return fmt.Errorf("%w:\n%s", err, a.LogTail(4096))
	}
	return nil
}

func (a *Agent) waitReady() error {
	path, ready, timeout := a.ReadyPath, a.Ready, a.StartTimeout
	if path == "" {
		path = "/readyz"
	}
	if ready == nil {
		ready = func(status int) (bool, error) { return status == http.StatusOK, nil }
	}
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	hc := &http.Client{Transport: a.tr, Timeout: 30 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-a.exited:
			return fmt.Errorf("the agent exited at start (%v)", a.cmd.ProcessState)
		default:
		}
		if resp, err := hc.Get("http://agent" + path); err == nil {
			resp.Body.Close()
			if ok, err := ready(resp.StatusCode); ok || err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent was not ready within %s", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// PID is the agent process's id.
func (a *Agent) PID() int { return a.cmd.Process.Pid }

// Running reports whether the agent process runs.
func (a *Agent) Running() bool {
	if a.cmd == nil {
		return false
	}
	select {
	case <-a.exited:
		return false
	default:
		return true
	}
}

// Kill ends the agent with SIGKILL, as a crash would, and waits for it.
// Its sandboxes' and daemons' processes are not its children: they live
// on.
func (a *Agent) Kill() error {
	if !a.Running() {
		return nil
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-a.exited
	a.tr.CloseIdleConnections()
	return nil
}

// Terminate sends SIGTERM and waits up to timeout for the agent to exit.
// It returns how long that took and how the agent ended (nil: status 0);
// one that outlives timeout is killed, and the error is ErrNoExit.
func (a *Agent) Terminate(timeout time.Duration) (time.Duration, error) {
	began := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return 0, err
	}
	select {
	case <-a.exited:
	case <-time.After(timeout):
		_ = a.Kill()
		return time.Since(began), fmt.Errorf("%w within %s of SIGTERM; killed", ErrNoExit, timeout)
	}
	a.tr.CloseIdleConnections()
	return time.Since(began), a.waitErr
}

// Wait waits up to timeout for the agent to exit by itself (after a
// shutdown asked through the API, say) and returns how it ended (nil:
// status 0); one that outlives timeout is killed, and the error is
// ErrNoExit.
func (a *Agent) Wait(timeout time.Duration) error {
	select {
	case <-a.exited:
	case <-time.After(timeout):
		_ = a.Kill()
		return fmt.Errorf("%w within %s; killed", ErrNoExit, timeout)
	}
	a.tr.CloseIdleConnections()
	return a.waitErr
}

// Stop ends the agent with SIGTERM and checks that it exits with status
// 0 within 30 seconds.
func (a *Agent) Stop() error {
	_, err := a.Terminate(30 * time.Second)
	switch {
	case errors.Is(err, ErrNoExit):
		return err
	case err != nil:
		return fmt.Errorf("the agent exited with %w after SIGTERM:\n%s", err, a.LogTail(4096))
	}
	return nil
}

// RunLog is the output of the agent's latest start.
func (a *Agent) RunLog() ([]byte, error) {
	b, err := os.ReadFile(a.LogPath())
	if err != nil {
		return nil, err
	}
	return b[min(a.logFrom, int64(len(b))):], nil
}

// LogTail is the end, n bytes at most each, of the agent's output and of
// the logs its daemons (containerd, dockerd) wrote, for failure messages.
func (a *Agent) LogTail(n int) string {
	var b strings.Builder
	for _, f := range []string{a.LogPath(), a.Path("log/containerd.log"), a.Path("log/dockerd.log")} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(data) > n {
			data = data[len(data)-n:]
		}
		fmt.Fprintf(&b, "---- %s (end):\n%s\n", f, data)
	}
	return b.String()
}

// LogOnFailure shows the end of the agent's logs when t fails.
func (a *Agent) LogOnFailure(t testing.TB) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log (end):\n%s", strings.TrimSpace(a.LogTail(8192)))
		}
	})
}

// Transport dials the agent's socket; Start makes a new one.
func (a *Agent) Transport() *http.Transport { return a.tr }

// RemoveSandboxes force-removes every sandbox the agent has, for the end
// of a suite, and returns their ids (or the error that kept it from
// listing them).
func (a *Agent) RemoveSandboxes() []string {
	hc := &http.Client{Transport: a.Transport(), Timeout: time.Minute}
	resp, err := hc.Get("http://agent/v1/sandboxes")
	if err != nil {
		return []string{err.Error()}
	}
	defer resp.Body.Close()
	var list api.SandboxList
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return []string{err.Error()}
	}
	var ids []string
	for _, s := range list.Sandboxes {
		ids = append(ids, s.Id)
		req, _ := http.NewRequest(http.MethodDelete, "http://agent/v1/sandboxes/"+s.Id+"?force=true", nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	return ids
}

// Client is the generated client over the agent's socket (see Client).
func (a *Agent) Client(t testing.TB) *api.ClientWithResponses {
	t.Helper()
	return Client(t, "http://agent", a.tr, "")
}

// SDK is the Go SDK's client over the agent's socket and Transport,
// checked against openapi.yaml (see SDK). opts come after its own.
func (a *Agent) SDK(t testing.TB, opts ...client.Option) *client.Client {
	t.Helper()
	return SDK(t, "unix://"+a.Socket(), append([]client.Option{client.WithHTTPClient(&http.Client{Transport: a.tr})}, opts...)...)
}

// RawSDK is SDK without the request checks (see RawSDK).
func (a *Agent) RawSDK(t testing.TB, opts ...client.Option) *client.Client {
	t.Helper()
	return RawSDK(t, "unix://"+a.Socket(), append([]client.Option{client.WithHTTPClient(&http.Client{Transport: a.tr})}, opts...)...)
}

// RawClient is Client without the request checks, to send what the
// contract forbids; the answers are still checked.
func (a *Agent) RawClient(t testing.TB) *api.ClientWithResponses {
	t.Helper()
	return apitest.NewClientWith(t, "http://agent", &apitest.Transport{T: t, Base: a.tr, SkipRequestValidation: true})
}
