package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/sandbox/oci"
)

// agentProc is the agent binary run as a process, every path under its
// directory, with a data device that does not exist (no test here needs
// the runtime's data volume). The test says what it wants in the fields
// below Agent's Dir and Env, and startAgentWith does the rest.
type agentProc struct {
	*agenttest.Agent
	stateDir string

	runtime string   // the OCI runtime binary the agent picked, from its log
	extra   []string // flags beyond args'
	// registries are the agent's --registry flags: the loopback test
	// registries it may pull from (it refuses the others).
	registries []string
	noBox      bool // the sandbox backend is meant not to start
}

// newAgent describes an agent whose files live in dir (made if missing,
// and kept across restarts of the same agent).
func newAgent(dir string) *agentProc {
	return &agentProc{Agent: &agenttest.Agent{Dir: dir}}
}

// startAgent starts an agent whose files live in dir.
func startAgent(dir string) (*agentProc, error) {
	return startAgentWith(newAgent(dir))
}

// startAgentWith starts the agent a describes (Dir, Env, extra,
// registries, noBox).
func startAgentWith(a *agentProc) (*agentProc, error) {
	a.stateDir = a.Path("state")
	a.Args = a.args()
	// It is up when listing sandboxes answers 200, or with noBox when
	// the backend has given up (503); a 503 otherwise says it is still
	// starting.
	a.ReadyPath = "/v1/sandboxes"
	a.Ready = func(status int) (bool, error) {
		switch {
		case status == http.StatusOK && !a.noBox, status == http.StatusServiceUnavailable && a.noBox:
			return true, nil
		case status == http.StatusServiceUnavailable:
			return false, nil
		}
		return false, fmt.Errorf("GET /v1/sandboxes answered %d: the sandbox backend did not start", status)
	}
	a.StartTimeout = 30 * time.Second
	suite.mu.Lock()
	suite.agents = append(suite.agents, a)
	suite.mu.Unlock()
	return a, a.start()
}

// cgroupParent is the parent cgroup of the agent's sandboxes.
func (a *agentProc) cgroupParent() string { return oci.DefaultCgroupParent(a.stateDir) }

// ownAgent starts an agent of the test's own (see startAgentWith), which
// logs on failure and is stopped when the test ends.
func ownAgent(t testing.TB, a *agentProc) *agentProc {
	t.Helper()
	requireSuite(t)
	if _, err := startAgentWith(a); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Stop(); err != nil {
			t.Error(err)
		}
	})
	a.LogOnFailure(t)
	return a
}

func (a *agentProc) args() []string {
	bb, _ := exec.LookPath("busybox")
	args := agenttest.Flags(a.Dir,
		"--sandbox-busybox", bb,
		"--set-clock=false",
		"--prepare-system=false",
		"--log-format", "json",
		"--sandbox-mount-root", suite.mountRoot,
	)
	for _, r := range a.registries {
		args = append(args, "--registry", r)
	}
	return append(args, a.extra...)
}

// start runs the agent (again), waits until its sandbox backend is up
// (see startAgentWith), and reads which OCI runtime it picked.
func (a *agentProc) start() error {
	if err := a.Start(); err != nil {
		return err
	}
	if a.noBox {
		return nil
	}
	rt, err := a.runtimeFromLog()
	if err != nil {
		_ = a.Kill()
		return err
	}
	a.runtime = rt
	return nil
}

// runtimeFromLog reads which OCI runtime the agent picked from this
// start's "sandbox backend ready" log line.
func (a *agentProc) runtimeFromLog() (string, error) {
	log, err := a.RunLog()
	if err != nil {
		return "", err
	}
	found := ""
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg     string `json:"msg"`
			Runtime string `json:"runtime"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "sandbox backend ready" {
			found = line.Runtime
		}
	}
	if found == "" {
		return "", fmt.Errorf("no \"sandbox backend ready\" line in the agent's log:\n%s", a.LogTail(4096))
	}
	return found, nil
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

// dialWS opens a WebSocket on path (with its query) over the unix socket.
// A refusal before the upgrade returns the response, body unread.
func (a *agentProc) dialWS(ctx context.Context, path string) (*websocket.Conn, *http.Response, error) {
	c, resp, err := websocket.Dial(ctx, "ws://agent"+path, &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: a.Transport()},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, resp, err
	}
	c.SetReadLimit(16 << 20)
	return c, resp, nil
}
