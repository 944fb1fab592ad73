package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

func TestMain(m *testing.M) {
	if addrs := os.Getenv(bareServerEnv); addrs != "" {
		// BenchmarkPing's bare peer, a process of its own as the agent is.
		fmt.Fprintln(os.Stderr, serveBare(addrs))
		os.Exit(1)
	}
	os.Exit(agenttest.Run(m))
}

// waitDial waits until the unix socket accepts connections.
func waitDial(t testing.TB, sock string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never accepted a connection: %v", sock, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// runAgent runs the agent in-process with args, its log to stderr, until
// the test ends: then it cancels it, and run must return nil.
func runAgent(t testing.TB, args []string, stderr io.Writer) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runErr(ctx, args, noEnv, io.Discard, stderr) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestRunFinishesRequestsInFlight starts the agent in-process, holds a
// request half sent, shuts the agent down, and checks that the request
// still gets its answer and run returns cleanly.
func TestRunFinishesRequestsInFlight(t *testing.T) {
	dir := t.TempDir()
	sock := agenttest.Socket(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runErr(ctx, agenttest.Flags(dir, "--set-clock=false"),
			noEnv, io.Discard, logs)
	}()
	waitDial(t, sock)

	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Expect: 100-continue makes the server say when its handler has
	// begun to read the body: from then on the request is in flight, and
	// shutdown must wait for it. (net/http drops a connection whose
	// headers it has not read when shutdown begins, answered or not.)
	body := `{"message":"late"}`
	fmt.Fprintf(conn, "POST /v1/ping HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", len(body))
	br := bufio.NewReader(conn)
	if cont, err := http.ReadResponse(br, nil); err != nil || cont.StatusCode != http.StatusContinue {
		t.Fatalf("want 100 Continue once the handler reads the body: %v %v", cont, err)
	}
	cancel()
	// Shutdown has begun once the listener refuses new connections (a
	// listener that never stops accepting hangs here until go test's
	// -timeout, which prints where).
	for {
		c, err := net.Dial("unix", sock)
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(2 * time.Millisecond)
	}
	if _, err := io.WriteString(conn, body); err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("in-flight request got no answer: %v", err)
	}
	var pong api.PingResponse
	if err := json.NewDecoder(resp.Body).Decode(&pong); err != nil || resp.StatusCode != 200 || pong.Message != "pong: late" {
		t.Fatalf("in-flight request: %d %+v %v", resp.StatusCode, pong, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Errorf("no stopped line in the log:\n%s", logs.String())
	}
}

func TestRunRefusesABusyTCPPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, err = run(context.Background(), agenttest.Flags(t.TempDir(), "--listen", "tcp://"+busy.Addr().String(), "--insecure-loopback"),
		noEnv, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("err = %v, want one naming the busy address", err)
	}
}

// TestBinary runs the built agent as a process: --version, --help, and a
// SIGTERM that ends it with status 0.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := agenttest.Binary(t)
	out, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "arcbox-agent "+agenttest.Version+" ") {
		t.Errorf("--version: %q %v", out, err)
	}
	out, err = exec.Command(bin, "--help").Output()
	if err != nil || !strings.Contains(string(out), "ARCBOX_LISTEN") {
		t.Errorf("--help: %v\n%s", err, out)
	}
	if err := exec.Command(bin, "--listen", "ftp://x").Run(); err == nil {
		t.Error("a bad --listen exited 0")
	}

	a := &agenttest.Agent{Dir: t.TempDir(), Env: []string{"GOMAXPROCS="}}
	a.Args = agenttest.Flags(a.Dir, "--set-clock=false")
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Kill() })
	c := a.Client(t)
	r, err := c.GetPingWithResponse(context.Background())
	if err != nil || r.JSON200 == nil || r.JSON200.Version != agenttest.Version {
		t.Fatalf("ping: %v %v", err, r)
	}
	// --max-procs: one by default.
	if m, err := c.GetMetricsWithResponse(context.Background()); err != nil {
		t.Errorf("metrics: %v", err)
	} else if !bytes.Contains(m.Body, []byte("\ngo_sched_gomaxprocs_threads 1\n")) {
		t.Errorf("GOMAXPROCS is not 1:\n%s", m.Body)
	}
	if err := a.Stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	// Logs are JSON when not on a terminal.
	logs, err := a.RunLog()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(logs)), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("log line is not JSON: %s", line)
		}
	}
	if _, err := os.Stat(a.Socket()); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestMetricsPassPromtool checks /metrics with Prometheus' own linter and
// that the startup phases are there.
func TestMetricsPassPromtool(t *testing.T) {
	promtool := testenv.RequireBinary(t, "promtool")
	dir := t.TempDir()
	sock := agenttest.Socket(dir)
	runAgent(t, agenttest.Flags(dir), io.Discard)
	waitDial(t, sock)
	c := apitest.NewClient(t, "http://agent", agenttest.UnixTransport(sock))
	ctx := context.Background()
	if _, err := c.GetPingWithResponse(ctx); err != nil { // one request observed
		t.Fatal(err)
	}
	r, err := c.GetMetricsWithResponse(ctx)
	if err != nil || r.StatusCode() != 200 {
		t.Fatalf("metrics: %v %v", err, r)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(r.Body)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	for _, want := range []string{
		`arcbox_agent_startup_phase_duration_seconds{phase="config"}`,
		`arcbox_agent_startup_phase_end_seconds{phase="go_init"}`,
		`arcbox_agent_startup_phase_end_seconds{phase="listen_control_unix"}`,
		`arcbox_agent_runtime_ready{service="dockerd"} 0`,
		`arcbox_agent_runtime_daemon_exits_total{service="containerd"} 0`,
		`arcbox_agent_runtime_ensure_total{status="failed"} 0`,
		`arcbox_agent_start_time_seconds `,
		`arcbox_agent_build_info{goversion=`,
		`arcbox_agent_http_request_duration_seconds_count{code="200",method="GET",route="/v1/ping"} 1`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(string(r.Body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	sock := agenttest.Socket(dir)
	var out bytes.Buffer
	probeDone := make(chan error, 1)
	// The probe starts before the agent and keeps trying until it answers.
	go func() {
		probeDone <- runProbe([]string{"-timeout", "60s", "-X", "POST", "-d", `{"message":"p"}`, "unix://" + sock, "/v1/ping"}, &out)
	}()
	runAgent(t, agenttest.Flags(dir), io.Discard)
	if err := <-probeDone; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `: 200 {"message":"pong: p"`) {
		t.Errorf("probe printed %q", out.String())
	}
	// The exit status says whether the agent answered, and how.
	if err := runProbe([]string{"unix://" + sock, "/v1/nothing"}, io.Discard); probeExitStatus(err) != probeAnswerError {
		t.Errorf("probe of a missing route: %v, exit status %d; want %d", err, probeExitStatus(err), probeAnswerError)
	}
	if err := runProbe([]string{"-timeout", "50ms", "unix://" + sock + ".none", "/v1/ping"}, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "gave up") || probeExitStatus(err) != probeUnreachable {
		t.Errorf("probe of nothing: %v, exit status %d; want %d", err, probeExitStatus(err), probeUnreachable)
	}
	if err := runProbe([]string{"vsock://x:1", "/"}, io.Discard); err == nil || probeExitStatus(err) != probeUnreachable {
		t.Errorf("bad vsock URL: %v, exit status %d; want %d", err, probeExitStatus(err), probeUnreachable)
	}
}

// noEnv is the environment of an agent run in the test process: none,
// but GOMAXPROCS, which keeps --max-procs off the test process (TestBinary
// checks it on the binary).
func noEnv(k string) string {
	if k == "GOMAXPROCS" {
		return "as the test process has it"
	}
	return ""
}

// runErr is run for tests that wait for its error alone.
func runErr(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	_, err := run(ctx, args, getenv, stdout, stderr)
	return err
}

// TestShutdownThroughTheAPI: POST /v1/system/shutdown answers 202, then the
// agent stops by itself and run returns the action asked for; a second
// order in the meantime is refused.
func TestShutdownThroughTheAPI(t *testing.T) {
	dir := t.TempDir()
	sock := agenttest.Socket(dir)
	logs := &lockedBuffer{}
	type result struct {
		action string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		action, err := run(context.Background(), agenttest.Flags(dir, "--set-clock=false", "--log-format", "json"),
			noEnv, io.Discard, logs)
		done <- result{action, err}
	}()
	waitDial(t, sock)
	c := apitest.NewClient(t, "http://agent", agenttest.UnixTransport(sock))
	grace := int32(5)
	r, err := c.ShutdownSystemWithResponse(context.Background(), api.ShutdownRequest{Action: api.ShutdownRequestActionReboot, GraceSeconds: &grace})
	if err != nil || r.StatusCode() != http.StatusAccepted || r.JSON202 == nil || r.JSON202.Action != "reboot" || r.JSON202.GraceSeconds != 5 {
		t.Fatalf("shutdown: %v %v", err, r)
	}
	// Until the listener closes, a second order is a 409; after, the
	// socket is gone. Either way it is not a second shutdown.
	if r2, err := c.ShutdownSystemWithResponse(context.Background(), api.ShutdownRequest{Action: api.ShutdownRequestActionPoweroff}); err == nil && r2.StatusCode() != http.StatusConflict {
		t.Errorf("a second shutdown: %d %s, want 409 or no answer", r2.StatusCode(), r2.Body)
	}
	res := <-done
	if res.err != nil || res.action != actionReboot {
		t.Fatalf("run returned %q, %v; want reboot and no error", res.action, res.err)
	}
	log := logs.String()
	for _, want := range []string{`"msg":"shutdown requested"`, `"msg":"shutting down","action":"reboot","grace":5000000000,"system":true,"asked_by":"the API"`, `"msg":"stopped"`} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %s:\n%s", want, log)
		}
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestSetMaxProcs: --max-procs sets GOMAXPROCS, 0 leaves Go's default, and
// GOMAXPROCS in the environment wins over either.
func TestSetMaxProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	none := func(string) string { return "" }
	for _, tt := range []struct {
		n      int
		env    func(string) string
		preset int
		want   int
	}{
		{1, none, 3, 1},
		{2, none, 3, 2},
		{0, none, 3, 3},
		{1, func(k string) string { return map[string]string{"GOMAXPROCS": "3"}[k] }, 3, 3},
	} {
		runtime.GOMAXPROCS(tt.preset)
		setMaxProcs(tt.n, tt.env)
		if got := runtime.GOMAXPROCS(0); got != tt.want {
			t.Errorf("setMaxProcs(%d) with GOMAXPROCS=%q: %d procs, want %d", tt.n, tt.env("GOMAXPROCS"), got, tt.want)
		}
	}
}
