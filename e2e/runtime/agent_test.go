package runtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// agentProc is the agent binary run as a process, every path under its
// directory, its data device an image file there (agenttest.Flags'
// data.img), its Docker API proxy on a loopback TCP port that wants its
// bearer token. Started again, it keeps its directory, and so its data
// volume.
type agentProc struct {
	*agenttest.Agent
	image      string // the data device: an image file
	dockerPort int
	token      string // the bearer token, in tokenFile
}

func (a *agentProc) tokenFile() string { return a.Path("token") }

// dockerConfig is the docker CLI's config directory: its config.json
// sends the token on every request (HttpHeaders).
func (a *agentProc) dockerConfig() string { return a.Path("docker-config") }

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

// start runs the agent, with extra flags after the usual ones, and waits
// until it answers /readyz with 200.
func (a *agentProc) start(t testing.TB, extra ...string) {
	t.Helper()
	a.Args = append(agenttest.Flags(a.Dir,
		"--docker-listen", a.dockerListen(),
		"--auth-token-file", a.tokenFile(),
		"--prepare-system=false",
		"--set-clock=false",
		"--log-format", "json",
		// Waits that guard against a hang, not measures: a loaded
		// machine may start the daemons slowly.
		"--containerd-start-timeout", "2m", "--dockerd-start-timeout", "5m",
	), extra...)
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
}

// terminate sends SIGTERM and waits for the agent to exit; it returns how
// long that took and how the agent ended. One that does not exit within
// timeout fails the test.
func (a *agentProc) terminate(t testing.TB, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	took, err := a.Terminate(timeout)
	if errors.Is(err, agenttest.ErrNoExit) {
		t.Fatalf("%v:\n%s", err, a.logTail())
	}
	return took, err
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
	r, err := a.Client(t).EnsureRuntimeWithResponse(ctx, api.RuntimeEnsureRequest{StartIfNeeded: &start})
	if err != nil || r.JSON200 == nil {
		return nil, fmt.Errorf("POST /v1/runtime/ensure: %v %v", err, r)
	}
	return r.JSON200, nil
}

func (a *agentProc) status(t testing.TB) *api.RuntimeStatus {
	t.Helper()
	r, err := a.Client(t).GetRuntimeStatusWithResponse(context.Background())
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
	b, err := a.RunLog()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var rec struct{ Msg, Service, Status string }
		if json.Unmarshal(line, &rec) == nil && rec.Msg == "daemon stopped" {
			out[rec.Service] = rec.Status
		}
	}
	return out
}

// logTail is the end of the agent's output and of the daemons' logs, for
// failure messages.
func (a *agentProc) logTail() string { return a.LogTail(3000) }

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
