package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata from the output")

// testNow is the clock of the unit tests: the fake agent's times are
// before it.
var testNow = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

const testToken = "0123456789abcdef0123456789abcdef"

// fakeAgent answers the routes a test gives it, on loopback TCP with a
// bearer token, as the agent's TCP listener does.
type fakeAgent struct {
	*httptest.Server
	mux *http.ServeMux
}

func newFakeAgent(t *testing.T) *fakeAgent {
	f := &fakeAgent{mux: http.NewServeMux()}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"code":401,"message":"missing or wrong bearer token"}`)
			return
		}
		f.mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// json answers pattern with status and body.
func (f *fakeAgent) json(pattern string, status int, body string) {
	f.mux.HandleFunc(pattern, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	})
}

// ndjson answers pattern with lines, flushed one by one.
func (f *fakeAgent) ndjson(pattern string, lines ...string) {
	f.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for _, l := range lines {
			fmt.Fprintln(w, l)
			w.(http.Flusher).Flush()
		}
	})
}

func (f *fakeAgent) host() string { return "tcp://" + f.Listener.Addr().String() }

// result is what one arcboxctl invocation did.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs arcboxctl in-process with args, in an empty working
// directory, the environment env and the clock testNow.
func runCLI(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	a := &app{
		stdin:  strings.NewReader(""),
		stdout: &out, stderr: &errOut,
		getenv:   func(k string) string { return env[k] },
		cwd:      t.TempDir(),
		now:      func() time.Time { return testNow },
		terminal: func(any) bool { return false },
		signals:  func(chan<- os.Signal, ...os.Signal) func() { return func() {} },
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := run(ctx, args, a)
	return result{out.String(), errOut.String(), code}
}

// agentEnv points arcboxctl at f with its token.
func (f *fakeAgent) env() map[string]string {
	return map[string]string{"ARCBOX_HOST": f.host(), "ARCBOX_TOKEN": testToken}
}

// golden compares got with testdata/name, or writes it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

const sandboxList = `{"sandboxes":[
 {"id":"demo","state":"ready","created_at":1796212740,"labels":{"team":"x","env":"dev"},"security":{"capabilities":[],"no_new_privileges":true,"read_only_rootfs":false,"seccomp":true,"user_namespace":true}},
 {"id":"web-1","state":"running","created_at":1796205600,"ip_address":"172.20.0.2"},
 {"id":"broken","state":"failed","created_at":1795953600,"labels":{"note":"tab\there"}}]}`

const sandboxInfo = `{"id":"web-1","state":"running","created_at":1796205600,"ready_at":1796205601,
 "last_exit_code":3,"last_exited_at":1796211000,"labels":{"team":"x"},
 "limits":{"memory_mib":512,"vcpus":1,"pids":1024},
 "network":{"mode":"bridge","ip_address":"172.20.0.2","gateway":"172.20.0.1"},
 "image_config":{"entrypoint":["/docker-entrypoint.sh"],"cmd":["nginx","-g","daemon off;"],"env":{"PATH":"/usr/bin:/bin"},"user":"","working_dir":"/srv"},
 "security":{"capabilities":["CAP_CHOWN","CAP_KILL"],"id_map":{"host_id":1073741824,"size":65536},"no_new_privileges":true,"read_only_rootfs":false,"seccomp":true,"user_namespace":true}}`

const runtimeStatus = `{"containerd_ready":true,"docker_ready":false,"endpoint":"vsock:2375",
 "detail":"dockerd: not answering on /var/run/docker.sock",
 "services":[{"name":"containerd","status":"ready","detail":"pid 41"},
  {"name":"dockerd","status":"error","detail":"exited with status 1\nfailed to start daemon"},
  {"name":"data-volume","status":"ready","detail":"/dev/vdb on /var/lib/arcbox-data"}]}`

const snapshotList = `{"snapshots":[
 {"id":"snap-1","sandbox_id":"demo","name":"before upgrade","created_at":1796209200,"snapshot_dir":"/var/lib/arcbox/snapshots/snap-1","labels":{"k":"v"}},
 {"id":"snap-2","sandbox_id":"web-1","created_at":1796212799,"snapshot_dir":"/var/lib/arcbox/snapshots/snap-2"}]}`

// TestTables pins the tables people read, and checks that -o json is
// the agent's body as it sent it.
func TestTables(t *testing.T) {
	f := newFakeAgent(t)
	f.json("GET /v1/sandboxes", 200, sandboxList)
	f.json("GET /v1/sandboxes/web-1", 200, sandboxInfo)
	f.json("GET /v1/runtime/status", 200, runtimeStatus)
	f.json("GET /v1/snapshots", 200, snapshotList)
	for _, tc := range []struct {
		golden string
		args   []string
		body   string
	}{
		{"sandbox-ls.golden", []string{"sandbox", "ls"}, sandboxList},
		{"sandbox-inspect.golden", []string{"sandbox", "inspect", "web-1"}, sandboxInfo},
		{"runtime-status.golden", []string{"runtime", "status"}, runtimeStatus},
		{"snapshot-ls.golden", []string{"snapshot", "ls"}, snapshotList},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			r := runCLI(t, f.env(), tc.args...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			golden(t, tc.golden, r.stdout)
			r = runCLI(t, f.env(), append([]string{"-o", "json"}, tc.args...)...)
			if r.code != 0 || r.stdout != tc.body+"\n" {
				t.Errorf("-o json: exit %d, stdout %q, want the body as sent %q", r.code, r.stdout, tc.body)
			}
		})
	}
}

// TestListFilters checks that ls passes its filters to the agent.
func TestListFilters(t *testing.T) {
	f := newFakeAgent(t)
	var got string
	f.mux.HandleFunc("GET /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.RawQuery
		fmt.Fprint(w, `{"sandboxes":[{"id":"a","state":"ready","created_at":1}]}`)
	})
	r := runCLI(t, f.env(), "sandbox", "ls", "-q", "--state", "ready", "--label", "team=x", "-l", "env=")
	if r.code != 0 || r.stdout != "a\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if want := "state=ready&label=team%3Dx&label=env%3D"; got != want {
		t.Errorf("query %q, want %q", got, want)
	}
}

// TestErrors checks that every failure is one line on stderr, prefixed,
// with the exit status its kind has, and nothing on stdout.
func TestErrors(t *testing.T) {
	f := newFakeAgent(t)
	f.json("GET /v1/sandboxes/nobox", 404, `{"code":404,"message":"sandbox \"nobox\""}`)
	f.json("POST /v1/sandboxes/nobox/run", 404, `{"code":404,"message":"sandbox \"nobox\""}`)
	closed := closedPort(t)
	missing := "unix://" + filepath.Join(t.TempDir(), "agent.sock")
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string // the line on stderr, after "arcboxctl: "
	}{
		{"unknown sandbox", f.env(), []string{"sandbox", "inspect", "nobox"}, 1, `sandbox "nobox" (404 Not Found)`},
		{"unknown sandbox run", f.env(), []string{"run", "nobox", "--", "true"}, 1, `sandbox "nobox" (404 Not Found)`},
		{"no token", map[string]string{"ARCBOX_HOST": f.host()}, []string{"ping"}, 1, "missing or wrong bearer token (401 Unauthorized)"},
		{"unreachable tcp", map[string]string{"ARCBOX_HOST": closed}, []string{"ping"}, 1, "cannot reach the agent at " + closed + ": connect: connection refused"},
		{"unreachable unix", nil, []string{"--host", missing, "sandbox", "ls"}, 1, "cannot reach the agent at " + missing + ": connect: no such file or directory"},
		{"wrong scheme", nil, []string{"--host", "http://127.0.0.1:8080", "ping"}, 2, `agent address "http://127.0.0.1:8080": unknown scheme "http"; want unix:///path, tcp://host:port or vsock://CID:PORT`},
		{"bad vsock", nil, []string{"--host", "vsock://x:1024", "info"}, 2, `agent address "vsock://x:1024": CID "x" is not a 32-bit number; want unix:///path, tcp://host:port or vsock://CID:PORT`},
		{"unknown flag", nil, []string{"sandbox", "ls", "--bogus"}, 2, "unknown flag: --bogus"},
		{"unknown command", nil, []string{"frob"}, 2, `unknown command "frob" for "arcboxctl"`},
		{"unknown subcommand", nil, []string{"sandbox", "frob"}, 2, `unknown command "frob" for "arcboxctl sandbox"`},
		{"missing argument", nil, []string{"sandbox", "inspect"}, 2, "arcboxctl sandbox inspect wants a SANDBOX, got 0 arguments"},
		{"bad label", nil, []string{"sandbox", "create", "--label", "nokey"}, 2, `--label "nokey": want KEY=VALUE`},
		{"bad output", nil, []string{"-o", "yaml", "ping"}, 2, `--output "yaml": want table or json`},
		{"bad timeout", nil, []string{"run", "--timeout", "1500ms", "box", "true"}, 2, "--timeout 1.5s: want whole seconds"},
		{"missing token file", map[string]string{"ARCBOX_HOST": closed, "ARCBOX_TOKEN_FILE": "/nonexistent/token"}, []string{"ping"}, 1, "read the token: open /nonexistent/token: no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, tc.env, tc.args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d", r.code, tc.code)
			}
			if want := "arcboxctl: " + tc.want + "\n"; r.stderr != want {
				t.Errorf("stderr %q, want %q", r.stderr, want)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
		})
	}
}

// closedPort is a tcp:// address nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "tcp://" + addr
}

// TestRunStreamsAndExit checks that run writes stdout and stderr to
// arcboxctl's own, and exits with the command's code.
func TestRunStreamsAndExit(t *testing.T) {
	f := newFakeAgent(t)
	f.ndjson("POST /v1/sandboxes/box/run",
		`{"stream":"stdout","data":"b3V0Cg=="}`,
		`{"stream":"stderr","data":"ZXJyCg=="}`,
		`{"stream":"exit","exit_code":3,"done":true}`)
	f.ndjson("POST /v1/sandboxes/cut/run",
		`{"stream":"stdout","data":"b3V0Cg=="}`,
		`{"stream":"exit","exit_code":0,"done":true,"truncated":["stdout"],"message":"stdout cut: a background child kept it open"}`)
	r := runCLI(t, f.env(), "run", "box", "--", "sh", "-c", "exit 3")
	if r.code != 3 || r.stdout != "out\n" || r.stderr != "err\n" {
		t.Errorf("exit %d, stdout %q, stderr %q; want 3, \"out\\n\", \"err\\n\"", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, f.env(), "run", "cut", "true")
	if r.code != 0 || r.stdout != "out\n" || r.stderr != "arcboxctl: stdout cut: a background child kept it open\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, f.env(), "-o", "json", "run", "box", "true")
	want := `{"stream":"stdout","data":"b3V0Cg=="}` + "\n" + `{"stream":"stderr","data":"ZXJyCg=="}` + "\n" + `{"stream":"exit","exit_code":3,"done":true}` + "\n"
	if r.code != 3 || r.stdout != want {
		t.Errorf("-o json: exit %d, stdout %q, want %q", r.code, r.stdout, want)
	}
}

// TestRunRequest checks the request run makes of its flags, and that the
// command's own flags are left to it.
func TestRunRequest(t *testing.T) {
	f := newFakeAgent(t)
	var got string
	f.mux.HandleFunc("POST /v1/sandboxes/box/run", func(w http.ResponseWriter, r *http.Request) {
		b := new(bytes.Buffer)
		_, _ = b.ReadFrom(r.Body)
		got = b.String()
		fmt.Fprintln(w, `{"stream":"exit","exit_code":0,"done":true}`)
	})
	r := runCLI(t, f.env(), "run", "--timeout", "30s", "-e", "A=1", "--workdir", "/tmp", "--user", "1000:1000", "box", "ls", "-l", "--all")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	want := `{"cmd":["ls","-l","--all"],"env":{"A":"1"},"timeout_seconds":30,"user":"1000:1000","working_dir":"/tmp"}`
	if strings.TrimSpace(got) != want {
		t.Errorf("request %s, want %s", got, want)
	}
}

// TestCreateFollowsPull checks that create waits for ready through the
// sandbox's events, showing each layer once it is pulled (plain lines
// off a terminal), and ignoring other sandboxes' events.
func TestCreateFollowsPull(t *testing.T) {
	f := newFakeAgent(t)
	subscribed := make(chan struct{})
	created := make(chan struct{})
	f.mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.(http.Flusher).Flush()
		close(subscribed)
		<-created
		for _, l := range []string{
			`{"seq":1,"action":"created","sandbox_id":"app","timestamp":1}`,
			`{"seq":2,"action":"failed","sandbox_id":"other","timestamp":2,"attributes":{"error":"not ours"}}`,
			`{"seq":3,"action":"image.pull","sandbox_id":"app","timestamp":3,"attributes":{"image":"reg/app:1","layer":"sha256:0123456789abcdef","done":"512","total":"2048"}}`,
			`{"seq":4,"action":"image.pull","sandbox_id":"app","timestamp":4,"attributes":{"image":"reg/app:1","layer":"sha256:0123456789abcdef","done":"2048","total":"2048"}}`,
			`{"seq":5,"action":"image.pull","sandbox_id":"app","timestamp":5,"attributes":{"image":"reg/app:1","layer":"sha256:fedcba9876543210","done":"3145728","total":"3145728"}}`,
			`{"seq":6,"action":"ready","sandbox_id":"app","timestamp":6}`,
		} {
			fmt.Fprintln(w, l)
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	})
	f.mux.HandleFunc("POST /v1/sandboxes", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-subscribed:
		default:
			t.Error("the sandbox was created before the events were subscribed to")
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprint(w, `{"id":"app","state":"starting"}`)
		close(created)
	})
	r := runCLI(t, f.env(), "sandbox", "create", "--image", "reg/app:1")
	want := "reg/app:1: layer 0123456789ab pulled (2.0 KiB)\nreg/app:1: layer fedcba987654 pulled (3.0 MiB)\n"
	if r.code != 0 || r.stdout != "app\n" || r.stderr != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0, \"app\\n\", %q", r.code, r.stdout, r.stderr, want)
	}
}

// TestCreateFailed checks that a sandbox that fails to start is an error
// with its reason.
func TestCreateFailed(t *testing.T) {
	f := newFakeAgent(t)
	created := make(chan struct{})
	f.mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.(http.Flusher).Flush()
		<-created
		fmt.Fprintln(w, `{"seq":9,"action":"failed","sandbox_id":"app","timestamp":1,"attributes":{"error":"pull reg/app:1: manifest unknown"}}`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	f.mux.HandleFunc("POST /v1/sandboxes", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprint(w, `{"id":"app","state":"starting"}`)
		close(created)
	})
	r := runCLI(t, f.env(), "sandbox", "create", "--id", "app", "--image", "reg/app:1")
	if r.code != 1 || r.stdout != "" || r.stderr != "arcboxctl: sandbox app failed: pull reg/app:1: manifest unknown\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestEnsureProgress checks runtime ensure's plain progress lines off a
// terminal, its answer, and -o json's stream as the agent sent it.
func TestEnsureProgress(t *testing.T) {
	f := newFakeAgent(t)
	lines := []string{
		`{"phase":"data_volume","took_ms":120}`,
		`{"phase":"containerd_ready","took_ms":45}`,
		`{"phase":"dockerd_ready","took_ms":830}`,
		`{"phase":"ensure","took_ms":1000,"status":"started"}`,
		`{"result":{"endpoint":"vsock:2375","message":"runtime started","ready":true,"status":"started"}}`,
	}
	f.ndjson("POST /v1/runtime/ensure", lines...)
	r := runCLI(t, f.env(), "runtime", "ensure")
	wantErr := "data_volume: done (120ms)\ncontainerd_ready: done (45ms)\ndockerd_ready: done (830ms)\nensure: started (1s)\n"
	if r.code != 0 || r.stdout != "started: runtime started\n" || r.stderr != wantErr {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, f.env(), "-o", "json", "runtime", "ensure")
	if want := strings.Join(lines, "\n") + "\n"; r.code != 0 || r.stdout != want {
		t.Errorf("-o json: exit %d, stdout %q, want %q", r.code, r.stdout, want)
	}
}

// TestEnsureFailed checks that a runtime that did not start is an error
// with the agent's reason.
func TestEnsureFailed(t *testing.T) {
	f := newFakeAgent(t)
	f.ndjson("POST /v1/runtime/ensure",
		`{"phase":"ensure","took_ms":3,"status":"failed"}`,
		`{"result":{"endpoint":"vsock:2375","message":"dockerd exited: status 1","ready":false,"status":"failed"}}`)
	r := runCLI(t, f.env(), "runtime", "ensure")
	if r.code != 1 || r.stdout != "" || r.stderr != "ensure: failed (3ms)\narcboxctl: the runtime did not start: dockerd exited: status 1\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestEventsReplay checks that events without -f prints what the agent
// keeps up to its newest seq and ends, filtered, as lines or as sent.
func TestEventsReplay(t *testing.T) {
	f := newFakeAgent(t)
	f.mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "# HELP arcbox_agent_event_journal_last_seq x\narcbox_agent_event_journal_last_seq 3\n")
	})
	var query string
	events := []string{
		`{"seq":2,"action":"created","sandbox_id":"a","timestamp":1796212800000000000}`,
		`{"seq":3,"action":"port.open","timestamp":1796212801500000000,"attributes":{"protocol":"tcp","address":"0.0.0.0","port":"80"}}`,
		`{"seq":4,"action":"removed","sandbox_id":"a","timestamp":1796212802000000000}`,
	}
	f.mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.RawQuery
		w.Header().Set("Content-Type", "application/x-ndjson")
		for _, l := range events {
			fmt.Fprintln(w, l)
		}
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	t.Setenv("TZ", "UTC")
	r := runCLI(t, f.env(), "events", "--since", "1")
	at := func(ns int64) string { return time.Unix(0, ns).Format("2006-01-02T15:04:05.000") }
	want := fmt.Sprintf("2      %s  created       a\n3      %s  port.open     -                address=0.0.0.0 port=80 protocol=tcp\n",
		at(1796212800000000000), at(1796212801500000000))
	if r.code != 0 || r.stdout != want || query != "after=1" {
		t.Errorf("exit %d, query %q, stdout %q, stderr %q; want\n%s", r.code, query, r.stdout, r.stderr, want)
	}
	r = runCLI(t, f.env(), "-o", "json", "events", "--sandbox", "a")
	if r.code != 0 || r.stdout != events[0]+"\n" {
		t.Errorf("-o json --sandbox a: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestCompletion checks that the shell completion scripts are there, and
// that sandbox ids complete from the agent.
func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		if r := runCLI(t, nil, "completion", sh); r.code != 0 || !strings.Contains(r.stdout, "arcboxctl") {
			t.Errorf("completion %s: exit %d, stderr %q", sh, r.code, r.stderr)
		}
	}
	f := newFakeAgent(t)
	f.json("GET /v1/sandboxes", 200, sandboxList)
	r := runCLI(t, f.env(), "__complete", "sandbox", "inspect", "")
	if r.code != 0 || !strings.Contains(r.stdout, "demo\tready\n") || !strings.Contains(r.stdout, "web-1\trunning\n") {
		t.Errorf("__complete: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestDefaultHost checks where arcboxctl looks for the agent without
// --host: $ARCBOX_HOST, the socket of make run in the working directory,
// then make run's TCP listener with its token file.
func TestDefaultHost(t *testing.T) {
	dir := t.TempDir()
	c := &cli{app: &app{cwd: dir, getenv: func(string) string { return "" }}}
	if got := c.addr(); got != defaultTCP {
		t.Errorf("no socket: %q, want %q", got, defaultTCP)
	}
	if err := os.MkdirAll(filepath.Join(dir, runDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, runDir, "token"), []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := c.tokenFor(defaultTCP); err != nil || tok != testToken {
		t.Errorf("token %q, %v; want .run/token's", tok, err)
	}
	sock := filepath.Join(dir, runDir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := c.addr(); got != "unix://"+sock {
		t.Errorf("with make run's socket: %q, want unix://%s", got, sock)
	}
	if tok, err := c.tokenFor("unix://" + sock); err != nil || tok != "" {
		t.Errorf("a unix socket got token %q, %v", tok, err)
	}
	c.getenv = func(k string) string { return map[string]string{"ARCBOX_HOST": "vsock://3:1024"}[k] }
	if got := c.addr(); got != "vsock://3:1024" {
		t.Errorf("with $ARCBOX_HOST: %q", got)
	}
	c.g.host = "tcp://10.0.0.1:9"
	if got := c.addr(); got != "tcp://10.0.0.1:9" {
		t.Errorf("with --host: %q", got)
	}
}

// TestLiveProgress draws phases and layers the way a terminal gets them,
// and checks that each ends up on the screen and that stop returns.
func TestLiveProgress(t *testing.T) {
	var screen bytes.Buffer
	p := newProgress(&screen, true, "starting the runtime")
	p.phase("data_volume", 120*time.Millisecond, "")
	p.layer("reg/app:1", "sha256:0123456789abcdef", 512, 2048)
	p.layer("reg/app:1", "sha256:0123456789abcdef", 2048, 2048)
	p.layer("reg/app:1", "sha256:fedcba9876543210", 10, 0)
	p.phase("ensure", time.Second, "started")
	p.stop()
	for _, want := range []string{"data_volume", "ensure: started", "0123456789ab", "pulled", "fedcba987654"} {
		if !strings.Contains(screen.String(), want) {
			t.Errorf("the screen lacks %q:\n%s", want, screen.String())
		}
	}
}
