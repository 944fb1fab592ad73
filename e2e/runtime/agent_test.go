package runtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// agentProc is the agent binary run as a process, every path under dir,
// its Docker API proxy on a loopback TCP port that wants its bearer token.
// Started again, it keeps its directory, and so its data volume.
type agentProc struct {
	dir        string
	image      string // the data device: an image file
	dockerPort int
	logPath    string // the agent's output, appended across restarts
	token      string // the bearer token, in tokenFile

	cmd     *exec.Cmd
	logFrom int64         // where this run's output begins in logPath
	exited  chan struct{} // closed once cmd has been waited for
	waitErr error         // cmd.Wait's answer, once exited is closed
	tr      *http.Transport
}

func (a *agentProc) path(name string) string { return filepath.Join(a.dir, name) }

func (a *agentProc) sock() string { return a.path("agent.sock") }

func (a *agentProc) tokenFile() string { return a.path("token") }

// dockerConfig is the docker CLI's config directory: its config.json
// sends the token on every request (HttpHeaders).
func (a *agentProc) dockerConfig() string { return a.path("docker-config") }

// writeToken makes the agent's token, its file (0600) and the docker
// CLI's config that carries it.
func (a *agentProc) writeToken(t testing.TB) {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	a.token = hex.EncodeToString(b)
	if err := os.WriteFile(a.tokenFile(), []byte(a.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(map[string]any{"HttpHeaders": map[string]string{"Authorization": "Bearer " + a.token}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(a.dockerConfig(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.dockerConfig(), "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
}

// dockerListen is the agent's --docker-listen, and so the endpoint it
// should give the host.
func (a *agentProc) dockerListen() string { return fmt.Sprintf("tcp://127.0.0.1:%d", a.dockerPort) }

func (a *agentProc) args() []string {
	return []string{
		"--listen", "unix://" + a.sock(),
		"--docker-listen", a.dockerListen(),
		"--auth-token-file", a.tokenFile(),
		"--cmdline-file", "/nonexistent",
		"--runtime-bin-dir", a.path("bin"),
		"--data-device", a.image,
		"--data-mount", a.path("data"),
		"--docker-data-root", a.path("docker"),
		"--containerd-root", a.path("containerd"),
		"--containerd-state", a.path("containerd-state"),
		"--containerd-config", a.path("containerd.toml"),
		"--containerd-socket", a.path("containerd.sock"),
		"--docker-socket", a.path("docker.sock"),
		"--docker-exec-root", a.path("docker-exec"),
		"--log-dir", a.path("log"),
		"--state-dir", a.path("state"),
		"--disk-state-dir", a.path("disk-state"),
		"--prepare-system=false",
		"--set-clock=false",
		"--log-format", "json",
	}
}

// start runs the agent, with extra flags after the usual ones, and waits
// until it answers /readyz with 200.
func (a *agentProc) start(t testing.TB, extra ...string) {
	t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := append(a.args(), extra...)
	fmt.Fprintf(logf, "---- %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	if a.logFrom, err = logf.Seek(0, io.SeekCurrent); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(suite.agentBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = a.dir
	// A race-enabled agent would otherwise sleep a second before exiting.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.cmd, a.exited = cmd, make(chan struct{})
	go func() { a.waitErr = cmd.Wait(); close(a.exited) }()
	a.tr = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", a.sock())
	}}
	hc := &http.Client{Transport: a.tr, Timeout: 30 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-a.exited:
			t.Fatalf("the agent exited at start (%v):\n%s", a.waitErr, a.logTail())
		default:
		}
		if resp, err := hc.Get("http://agent/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent was not ready within 2 minutes:\n%s", a.logTail())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

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

// client is the generated client over the agent's socket, every exchange
// checked against openapi.yaml and reported to t.
func (a *agentProc) client(t testing.TB) *api.ClientWithResponses {
	return apitest.NewClient(t, "http://agent", a.tr)
}

// terminate sends SIGTERM and waits for the agent to exit; it returns how
// long that took and how the agent ended.
func (a *agentProc) terminate(t testing.TB, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	began := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-a.exited:
		return time.Since(began), a.waitErr
	case <-time.After(timeout):
		t.Fatalf("the agent did not exit within %s of SIGTERM:\n%s", timeout, a.logTail())
	}
	return 0, nil
}

// kill ends an agent the test gave up on.
func (a *agentProc) kill() {
	if a.running() {
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
}

// ensure asks the agent for the runtime.
func (a *agentProc) ensure(t testing.TB, start bool) *api.RuntimeEnsureResponse {
	t.Helper()
	res, err := a.tryEnsure(t, start)
	if err != nil {
		t.Fatalf("%v\n%s", err, a.logTail())
	}
	return res
}

// tryEnsure is ensure for goroutines other than the test's.
func (a *agentProc) tryEnsure(t testing.TB, start bool) (*api.RuntimeEnsureResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := a.client(t).EnsureRuntimeWithResponse(ctx, api.RuntimeEnsureRequest{StartIfNeeded: &start})
	if err != nil || r.JSON200 == nil {
		return nil, fmt.Errorf("POST /v1/runtime/ensure: %v %v", err, r)
	}
	return r.JSON200, nil
}

func (a *agentProc) status(t testing.TB) *api.RuntimeStatus {
	t.Helper()
	r, err := a.client(t).GetRuntimeStatusWithResponse(context.Background())
	if err != nil || r.JSON200 == nil {
		t.Fatalf("GET /v1/runtime/status: %v %v", err, r)
	}
	return r.JSON200
}

// service returns the named service of a status.
func service(t testing.TB, st *api.RuntimeStatus, name string) api.ServiceStatus {
	t.Helper()
	for _, s := range st.Services {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("runtime status has no %s service: %+v", name, st.Services)
	return api.ServiceStatus{}
}

// daemonStops reads this run's log for how the agent's daemons ended
// when it stopped them: service name to exit status.
func (a *agentProc) daemonStops(t testing.TB) map[string]string {
	t.Helper()
	b, err := os.ReadFile(a.logPath)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range bytes.Split(b[a.logFrom:], []byte("\n")) {
		var rec struct{ Msg, Service, Status string }
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "daemon stopped" {
			out[rec.Service] = rec.Status
		}
	}
	return out
}

// logTail is the end of the agent's output and of the daemons' logs, for
// failure messages.
func (a *agentProc) logTail() string {
	var b strings.Builder
	for _, f := range []string{a.logPath, a.path("log/containerd.log"), a.path("log/dockerd.log")} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		fmt.Fprintf(&b, "---- %s (end):\n%s\n", f, data)
	}
	return b.String()
}

// docker runs the docker CLI against the agent's proxy at host, with
// stdin when it is not nil, and returns its standard output.
func (e *env) docker(t testing.TB, stdin io.Reader, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.dockerCmd(ctx, args...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker %s: %v\nstderr: %s\n%s", strings.Join(args, " "), err, errb.String(), e.agent.logTail())
	}
	return out.String()
}

func (e *env) dockerCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, e.bins["docker"], args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.dockerHost, "DOCKER_CONFIG="+e.agent.dockerConfig())
	return cmd
}
