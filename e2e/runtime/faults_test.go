package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// Faults, as a user meets them: a daemon killed under the agent, and the
// agent itself killed and started again beside its daemons.

// dockerdKilled: dockerd killed -9 under the agent. Status says so at
// once, the Docker proxy answers 502 with dockerd's error shape (curl,
// the docker CLI and a Go client all read it), the next ensure starts
// dockerd alone, and the proxy works again.
func (e *env) dockerdKilled(t *testing.T) {
	a := e.agent
	pid := daemons(a)["dockerd"]
	if pid == 0 {
		t.Fatalf("no dockerd child of the agent: %v", daemons(a))
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitService(t, "dockerd", "error", "signal: killed")
	if st := a.status(t); !st.ContainerdReady || st.DockerReady {
		t.Errorf("status with dockerd killed: %+v, want containerd ready, dockerd not", st)
	}
	e.checkProxyAnswers502(t)

	res := a.ensure(t, true)
	if res.Status != "started" || !res.Ready || !strings.Contains(res.Message, "spawned bundled dockerd") || strings.Contains(res.Message, "spawned bundled containerd") {
		t.Fatalf("ensure after dockerd was killed: %+v, want started, dockerd alone", res)
	}
	if out := e.docker(t, nil, "run", "--rm", e.ref, "echo", "back"); out != "back\n" {
		t.Errorf("docker run through the proxy after dockerd's restart: %q", out)
	}
}

// containerdKilled: containerd killed -9 under the agent. Status says so
// while dockerd still answers; the next ensure starts containerd alone,
// and dockerd finds it again by itself.
func (e *env) containerdKilled(t *testing.T) {
	a := e.agent
	pid := daemons(a)["containerd"]
	if pid == 0 {
		t.Fatalf("no containerd child of the agent: %v", daemons(a))
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitService(t, "containerd", "error", "signal: killed")
	if st := a.status(t); st.ContainerdReady || !st.DockerReady || !strings.Contains(st.Detail, "containerd exited (signal: killed)") {
		t.Errorf("status with containerd killed: %+v", st)
	}
	res := a.ensure(t, true)
	if res.Status != "started" || !res.Ready || !strings.Contains(res.Message, "spawned bundled containerd") || strings.Contains(res.Message, "spawned bundled dockerd") {
		t.Fatalf("ensure after containerd was killed: %+v, want started, containerd alone", res)
	}
	e.dockerEventually(t, "again\n", "run", "--rm", e.ref, "echo", "again")
}

// TestAgentRestartedBesideItsDaemons: the agent is killed -9 with its
// daemons running and a container in them. The next agent adopts both
// daemons: status and ensure tell so (reused, nothing started), the
// container goes on running and answers through the proxy. A kill -9 of
// the adopted dockerd is noticed though it is not the agent's child, and
// repaired; SIGTERM then stops the adopted containerd as the agent's own
// dockerd, and nothing is left.
func TestAgentRestartedBesideItsDaemons(t *testing.T) {
	e := setup(t)
	a := e.agent
	a.start(t)
	res := a.ensure(t, true)
	if res.Status != "started" || !res.Ready {
		t.Fatalf("cold ensure: %+v", res)
	}
	e.dockerHost = res.Endpoint
	e.docker(t, nil, "pull", "-q", e.ref)
	id := strings.TrimSpace(e.docker(t, nil, "run", "-d", "--stop-timeout", "1", e.ref, "sleep", "600"))
	kids := daemons(a)
	if kids["containerd"] == 0 || kids["dockerd"] == 0 {
		t.Fatalf("the agent's daemons: %v", kids)
	}

	_ = a.Kill()
	for name, pid := range kids {
		if !alive(pid) {
			t.Fatalf("%s (pid %d) died with the agent", name, pid)
		}
	}

	a.start(t)
	st := a.status(t)
	if !st.ContainerdReady || !st.DockerReady {
		t.Fatalf("status beside the earlier agent's daemons: %+v", st)
	}
	for name, pid := range kids {
		if s := service(t, st, name); s.Status != "ready" || !strings.Contains(s.Detail, fmt.Sprintf("adopted from an earlier agent (pid %d)", pid)) {
			t.Errorf("%s: %+v, want ready, adopted (pid %d)", name, s, pid)
		}
	}
	res = a.ensure(t, true)
	if res.Status != "reused" || !res.Ready || res.Endpoint != a.dockerListen() {
		t.Fatalf("ensure beside the adopted daemons: %+v, want reused: nothing was started", res)
	}
	for name, pid := range kids {
		if want := fmt.Sprintf("adopted %s (pid=%d)", name, pid); !strings.Contains(res.Message, want) {
			t.Errorf("ensure's message %q lacks %q", res.Message, want)
		}
	}
	if now := daemons(a); len(now) != 0 {
		t.Errorf("the new agent's own daemons: %v, want none (it adopted)", now)
	}
	if running := strings.TrimSpace(e.docker(t, nil, "inspect", "-f", "{{.State.Running}}", id)); running != "true" {
		t.Errorf("the container after the agent's restart: running %s", running)
	}
	if out := e.docker(t, nil, "exec", id, "echo", "still here"); out != "still here\n" {
		t.Errorf("docker exec into the container after the agent's restart: %q", out)
	}

	// The adopted dockerd killed: not the agent's child, seen all the same.
	if err := unix.Kill(kids["dockerd"], unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitService(t, "dockerd", "error", "adopted: exit status unknown")
	e.checkProxyAnswers502(t)
	res = a.ensure(t, true)
	if res.Status != "started" || !res.Ready || !strings.Contains(res.Message, "spawned bundled dockerd") ||
		!strings.Contains(res.Message, fmt.Sprintf("adopted containerd (pid=%d)", kids["containerd"])) {
		t.Fatalf("ensure after the adopted dockerd was killed: %+v, want dockerd started beside the adopted containerd", res)
	}
	if out := e.docker(t, nil, "run", "--rm", e.ref, "echo", "hi"); out != "hi\n" {
		t.Errorf("docker run after dockerd's restart: %q", out)
	}

	took, exit := a.terminate(t, 2*time.Minute)
	t.Logf("exit %v, %s after SIGTERM", exit, took.Round(time.Millisecond))
	if exit != nil {
		t.Errorf("the agent's exit after SIGTERM: %v, want status 0", exit)
	}
	stops := a.daemonStops(t)
	if stops["dockerd"] != "exit status 0" || stops["containerd"] != "exited after SIGTERM (adopted: exit status unknown)" {
		t.Errorf("daemons stopped: %v, want its dockerd exit status 0 and the adopted containerd by SIGTERM", stops)
	}
	if alive(kids["containerd"]) {
		t.Errorf("the adopted containerd (pid %d) outlived the agent's SIGTERM", kids["containerd"])
	}
	if left := processesOf(suite.dir); len(left) > 0 {
		t.Errorf("processes left after the agent exited:\n%s", procList(left))
	}
	e.checkAgentLog(t)
}

// waitService waits until the runtime status shows the service in state
// with detail containing what.
func (e *env) waitService(t testing.TB, name, state, what string) {
	t.Helper()
	var last string
	ok := agenttest.WaitFor(time.Minute, func() bool {
		s := service(t, e.agent.status(t), name)
		last = fmt.Sprintf("%+v", s)
		return string(s.Status) == state && strings.Contains(s.Detail, what)
	})
	if !ok {
		t.Fatalf("%s never became %s with %q in its detail; last %s", name, state, what, last)
	}
}

// checkProxyAnswers502: with dockerd down, the Docker proxy answers a
// request with 502 and dockerd's error shape, {"message": ...}, as curl
// (which saw no answer at all before, status 000), a Go client and the
// docker CLI read it.
func (e *env) checkProxyAnswers502(t *testing.T) {
	t.Helper()
	a := e.agent
	url := fmt.Sprintf("http://127.0.0.1:%d/v1.41/version", a.dockerPort)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	curl := testenv.RequireBinary(t, "curl")
	out, err := exec.CommandContext(ctx, curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer "+a.token, url).Output()
	if string(out) != "502" {
		t.Errorf("curl %s: status %q (%v), want 502", url, out, err)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var msg struct{ Message string }
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Content-Type") != "application/json" ||
		dec.Decode(&msg) != nil || !strings.Contains(msg.Message, "cannot reach dockerd") {
		t.Errorf("GET %s: %s, %s, %q; want 502, application/json, {\"message\": ...}", url, resp.Status, resp.Header.Get("Content-Type"), body)
	}

	cli := e.dockerCmd(ctx, "ps")
	b, err := cli.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "Error response from daemon: arcbox agent: cannot reach dockerd") {
		t.Errorf("docker ps with dockerd down: %v, %q; want the proxy's message", err, b)
	}
}

// dockerEventually runs the docker CLI until it succeeds with want on its
// standard output, for a minute: after containerd is started again,
// dockerd reconnects to it only after its gRPC back-off (seconds).
func (e *env) dockerEventually(t testing.TB, want string, args ...string) {
	t.Helper()
	var last string
	ok := agenttest.WaitFor(time.Minute, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := e.dockerCmd(ctx, args...).CombinedOutput()
		last = fmt.Sprintf("%v: %s", err, out)
		return err == nil && string(out) == want
	})
	if !ok {
		t.Fatalf("docker %s never answered %q; last: %s", strings.Join(args, " "), want, last)
	}
}
