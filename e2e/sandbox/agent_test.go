package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// agentProc is the agent binary run as a process, with every path under
// dir: its socket, state, logs, and a data device that does not exist (no
// test here needs the runtime's data volume).
type agentProc struct {
	dir      string
	sock     string
	stateDir string
	logPath  string // the agent's stderr, appended across restarts

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	tr     *http.Transport

	runtime string   // the OCI runtime binary the agent picked, from its log
	extra   []string // flags beyond args'
	// registries are the agent's --registry flags: the loopback test
	// registries it may pull from (it refuses the others).
	registries []string
	env        []string // environment beyond the test's
	noBox      bool     // the sandbox backend is meant not to start
}

// startAgent starts an agent whose files live in dir (made if missing, and
// kept across restarts of the same agent).
func startAgent(dir string) (*agentProc, error) {
	return startAgentWith(&agentProc{dir: dir})
}

// startAgentWith starts the agent a describes (dir, extra, env, noBox).
func startAgentWith(a *agentProc) (*agentProc, error) {
	dir := a.dir
	a.sock = filepath.Join(dir, "agent.sock")
	a.stateDir = filepath.Join(dir, "state")
	a.logPath = filepath.Join(dir, "agent.log")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	suite.mu.Lock()
	suite.agents = append(suite.agents, a)
	suite.mu.Unlock()
	return a, a.start()
}

// ownAgent starts an agent of the test's own (see startAgentWith), which
// logs on failure and is stopped when the test ends.
func ownAgent(t testing.TB, a *agentProc) *agentProc {
	t.Helper()
	requireSuite(t)
	if _, err := startAgentWith(a); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.stop(); err != nil {
			t.Error(err)
		}
	})
	a.logOnFailure(t)
	return a
}

func (a *agentProc) args() []string {
	bb, _ := exec.LookPath("busybox")
	args := []string{
		"--listen", "unix://" + a.sock,
		"--docker-listen", "unix://" + filepath.Join(a.dir, "docker-proxy.sock"),
		"--cmdline-file", "/nonexistent",
		"--state-dir", a.stateDir,
		"--log-dir", filepath.Join(a.dir, "log"),
		"--runtime-bin-dir", filepath.Join(a.dir, "bin"),
		"--data-device", filepath.Join(a.dir, "no-data.img"),
		"--data-mount", filepath.Join(a.dir, "data"),
		"--docker-socket", filepath.Join(a.dir, "docker.sock"),
		"--containerd-socket", filepath.Join(a.dir, "containerd.sock"),
		"--docker-data-root", filepath.Join(a.dir, "docker"),
		"--containerd-root", filepath.Join(a.dir, "containerd"),
		"--containerd-state", filepath.Join(a.dir, "containerd-state"),
		"--containerd-config", filepath.Join(a.dir, "containerd.toml"),
		"--docker-exec-root", filepath.Join(a.dir, "docker-exec"),
		"--sandbox-busybox", bb,
		"--set-clock=false",
		"--prepare-system=false",
		"--log-format", "json",
		"--sandbox-mount-root", suite.mountRoot,
	}
	for _, r := range a.registries {
		args = append(args, "--registry", r)
	}
	return append(args, a.extra...)
}

// start runs the agent and waits until it serves and its sandbox backend
// is up (listing sandboxes answers 200, not 503), or with noBox until it
// has given up on it (503).
func (a *agentProc) start() error {
	logf, err := os.OpenFile(a.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(suite.agentBin, a.args()...)
	cmd.Env = append(os.Environ(), a.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = a.dir
	// Should the test binary die (a timeout's panic), the agent goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	a.cmd = cmd
	a.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(a.exited) }()
	a.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", a.sock)
		},
		MaxIdleConnsPerHost: 16,
	}
	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Transport: a.tr, Timeout: 10 * time.Second}
	for {
		select {
		case <-a.exited:
			return fmt.Errorf("the agent exited at start (%v):\n%s", cmd.ProcessState, a.logTail(4096))
		default:
		}
		if resp, err := hc.Get("http://agent/v1/sandboxes"); err == nil {
			status := resp.StatusCode
			resp.Body.Close()
			if status == http.StatusOK && !a.noBox || status == http.StatusServiceUnavailable && a.noBox {
				break
			}
			if status != http.StatusServiceUnavailable || time.Now().After(deadline) {
				_ = a.kill()
				return fmt.Errorf("GET /v1/sandboxes answered %d: the sandbox backend did not start:\n%s", status, a.logTail(4096))
			}
		}
		if time.Now().After(deadline) {
			_ = a.kill()
			return fmt.Errorf("the agent did not serve within 30s:\n%s", a.logTail(4096))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if a.noBox {
		return nil
	}
	rt, err := a.runtimeFromLog()
	if err != nil {
		_ = a.kill()
		return err
	}
	a.runtime = rt
	return nil
}

// runtimeFromLog reads which OCI runtime the agent picked from its
// "sandbox backend ready" log line.
func (a *agentProc) runtimeFromLog() (string, error) {
	f, err := os.Open(a.logPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	found := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg     string `json:"msg"`
			Runtime string `json:"runtime"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "sandbox backend ready" {
			found = line.Runtime // the last start's
		}
	}
	if found == "" {
		return "", fmt.Errorf("no \"sandbox backend ready\" line in the agent's log:\n%s", a.logTail(4096))
	}
	return found, nil
}

// kill ends the agent with SIGKILL, as a crash would, and waits for it.
// Its sandboxes' processes are not its children: they live on.
func (a *agentProc) kill() error {
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-a.exited
	a.tr.CloseIdleConnections()
	return nil
}

// stop ends the agent with SIGTERM and checks that it exits cleanly.
func (a *agentProc) stop() error {
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-a.exited:
	case <-time.After(30 * time.Second):
		_ = a.kill()
		return fmt.Errorf("the agent did not exit within 30s of SIGTERM; killed")
	}
	a.tr.CloseIdleConnections()
	if !a.cmd.ProcessState.Success() {
		return fmt.Errorf("the agent exited with %v after SIGTERM:\n%s", a.cmd.ProcessState, a.logTail(4096))
	}
	return nil
}

// running reports whether the agent process runs.
func (a *agentProc) running() bool {
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

// deleteContainers deletes, with their processes, the containers the
// agent's OCI runtime still has, and returns their ids.
func (a *agentProc) deleteContainers() []string {
	if a.runtime == "" {
		return nil
	}
	root := filepath.Join(a.stateDir, "runtime")
	out, err := exec.Command(a.runtime, "--root", root, "list", "-q").Output()
	if err != nil {
		return nil
	}
	ids := strings.Fields(string(out))
	for _, id := range ids {
		_ = exec.Command(a.runtime, "--root", root, "delete", "-f", id).Run()
	}
	return ids
}

// removeAll force-removes every sandbox the agent has, for the end of the
// suite, and returns their ids.
func (a *agentProc) removeAll() []string {
	hc := &http.Client{Transport: a.tr, Timeout: time.Minute}
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

// logTail is the end of the agent's log.
func (a *agentProc) logTail(n int) string {
	data, _ := os.ReadFile(a.logPath)
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

// client is the generated client, checking every exchange against
// openapi.yaml and reporting disagreements as errors of t.
func (a *agentProc) client(t testing.TB) *api.ClientWithResponses {
	t.Helper()
	return apitest.NewClient(t, "http://agent", a.tr)
}

// rawClient is client without the request checks, to send what the
// contract forbids; the answers are still checked.
func (a *agentProc) rawClient(t testing.TB) *api.ClientWithResponses {
	t.Helper()
	return apitest.NewClientWith(t, "http://agent", &apitest.Transport{T: t, Base: a.tr, SkipRequestValidation: true})
}

// dialWS opens a WebSocket on path (with its query) over the unix socket.
// A refusal before the upgrade returns the response, body unread.
func (a *agentProc) dialWS(ctx context.Context, path string) (*websocket.Conn, *http.Response, error) {
	c, resp, err := websocket.Dial(ctx, "ws://agent"+path, &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: a.tr},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, resp, err
	}
	c.SetReadLimit(16 << 20)
	return c, resp, nil
}

// logOnFailure shows the end of the agent's log when t fails.
func (a *agentProc) logOnFailure(t testing.TB) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log (end):\n%s", strings.TrimSpace(a.logTail(8192)))
		}
	})
}
