package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

const testToken = "s3cret-0123456789abcdefghijklmnopqrstuvwxyz"

func tokenFile(t *testing.T, token string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRunRefusesUnauthenticatedListeners: the agent does not start when a
// TCP listener would let anyone in, or the token file is not fit.
func TestRunRefusesUnauthenticatedListeners(t *testing.T) {
	good := tokenFile(t, testToken, 0o600)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"non-loopback TCP without a token", []string{"--listen", "tcp://0.0.0.0:0"},
			[]string{"tcp://0.0.0.0:0", "--auth-token-file", "--insecure-loopback"}},
		{"non-loopback TCP even with --insecure-loopback", []string{"--listen", "tcp://0.0.0.0:0", "--insecure-loopback"},
			[]string{"tcp://0.0.0.0:0", "--auth-token-file", "loopback address"}},
		{"loopback TCP without --insecure-loopback", []string{"--listen", "tcp://127.0.0.1:0"},
			[]string{"tcp://127.0.0.1:0", "--auth-token-file", "--insecure-loopback"}},
		{"a host name is not loopback", []string{"--listen", "tcp://localhost:0", "--insecure-loopback"},
			[]string{"tcp://localhost:0", "beyond loopback"}},
		{"short token", []string{"--auth-token-file", tokenFile(t, "short", 0o600)},
			[]string{"--auth-token-file", "5 characters; want at least 32"}},
		{"token file readable by others", []string{"--auth-token-file", tokenFile(t, testToken, 0o644)},
			[]string{"--auth-token-file", "mode 0644"}},
		{"unreadable token file", []string{"--auth-token-file", filepath.Join(t.TempDir(), "none")},
			[]string{"--auth-token-file", "no such file"}},
		{"loopback TCP Docker listener without a token or --insecure-loopback", []string{"--docker-listen", "tcp://127.0.0.1:0"},
			[]string{"docker listener tcp://127.0.0.1:0", "--auth-token-file", "--insecure-loopback"}},
		{"non-loopback TCP Docker listener without a token", []string{"--docker-listen", "tcp://0.0.0.0:0", "--insecure-loopback"},
			[]string{"docker listener tcp://0.0.0.0:0", "--auth-token-file", "loopback address"}},
		{"a fit token does not excuse an unfit listener", []string{"--auth-token-file", good, "--docker-listen", "tcp://[::1"},
			[]string{"tcp://[::1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sock := agenttest.Socket(dir)
			_, err := run(context.Background(), agenttest.Flags(dir, tt.args...), noEnv, io.Discard, io.Discard)
			if err == nil {
				t.Fatal("the agent started")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), testToken) {
				t.Errorf("the error holds the token: %v", err)
			}
			if _, err := os.Stat(sock); !os.IsNotExist(err) {
				t.Errorf("a listener was bound before the refusal: %v", err)
			}
		})
	}
}

// TestRunWithToken runs the agent with a token, a TCP and a unix
// listener, a socket group and an audit file: TCP wants the token, the
// unix socket (0660, the group's) does not, every mutating call is in
// the audit file with its peer, and no log line holds the token.
func TestRunWithToken(t *testing.T) {
	dir := t.TempDir()
	sock, dockerSock := agenttest.Socket(dir), agenttest.DockerSocket(dir)
	auditPath := filepath.Join(dir, "audit", "audit.log")
	port := agenttest.FreePort(t)
	gid := os.Getgid()
	if os.Geteuid() == 0 {
		gid = 4242
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &lockedBuffer{}
	tokenPath := tokenFile(t, testToken, 0o600)
	done := make(chan error, 1)
	go func() {
		done <- runErr(ctx, agenttest.Flags(dir, "--set-clock=false", "--log-level", "debug",
			"--listen", fmt.Sprintf("tcp://127.0.0.1:%d", port), "--socket-group", fmt.Sprint(gid), "--audit-log", auditPath),
			func(k string) string {
				if k == "ARCBOX_AUTH_TOKEN_FILE" { // the environment works as for every flag
					return tokenPath
				}
				return noEnv(k)
			}, io.Discard, logs)
	}()
	waitDial(t, sock)
	waitDial(t, dockerSock)

	for _, s := range []string{sock, dockerSock} {
		fi, err := os.Stat(s)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || int(st.Gid) != gid {
			t.Errorf("%s: mode %04o group %d, want 0660 group %d", s, fi.Mode().Perm(), st.Gid, gid)
		}
	}

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	tcp := &http.Client{}
	unix := &http.Client{Transport: agenttest.UnixTransport(sock)}
	call := func(c *http.Client, method, url, auth string) int {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(`{"message":"hi"}`))
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tt := range []struct {
		name   string
		c      *http.Client
		method string
		url    string
		auth   string
		want   int
	}{
		{"tcp, no token", tcp, "GET", base + "/v1/ping", "", 401},
		{"tcp, wrong token", tcp, "POST", base + "/v1/ping", "Bearer " + strings.ToUpper(testToken), 401},
		{"tcp, token in the query", tcp, "GET", base + "/v1/ping?access_token=" + testToken, "", 401},
		{"tcp, right token", tcp, "POST", base + "/v1/ping", "Bearer " + testToken, 200},
		{"unix, no token", unix, "POST", "http://agent/v1/ping", "", 200},
	} {
		if got := call(tt.c, tt.method, tt.url, tt.auth); got != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, got, tt.want)
		}
	}
	// The probe, as a VM's own processes use it, carries the token too.
	tcpURL := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	if err := runProbe([]string{"-token-file", tokenPath, tcpURL, "/v1/ping"}, io.Discard); err != nil {
		t.Errorf("probe with the token: %v", err)
	}
	if err := runProbe([]string{tcpURL, "/v1/ping"}, io.Discard); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("probe without the token: %v, want a 401", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %04o, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		var l struct {
			Msg, Component, Transport, Auth, Method, Route string
			Status                                         int
			Peer                                           json.RawMessage
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line is not JSON: %v: %s", err, sc.Text())
		}
		if l.Msg != "audit" || l.Component != "audit" {
			t.Errorf("not an audit line: %s", sc.Text())
		}
		if l.Transport == "unix" && !strings.Contains(string(l.Peer), fmt.Sprintf(`"uid":%d`, os.Getuid())) {
			t.Errorf("unix audit line without the peer's uid: %s", sc.Text())
		}
		got = append(got, fmt.Sprintf("%s %s %s %s %d", l.Transport, l.Auth, l.Method, l.Route, l.Status))
	}
	want := []string{
		"tcp refused POST /v1/ping 401",
		"tcp bearer POST /v1/ping 200",
		"unix unix-socket POST /v1/ping 200",
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(logs.String(), `"msg":"audit"`) {
		t.Error("audit lines went to the main log too")
	}
	for name, text := range map[string]string{"log": logs.String(), "audit log": string(data)} {
		if strings.Contains(text, testToken) || strings.Contains(text, "Bearer") {
			t.Errorf("the %s holds the token or the Authorization header:\n%s", name, text)
		}
	}
}

func TestForbiddenPaths(t *testing.T) {
	c, err := loadConfig(agenttest.Flags("/r", "--listen", "vsock://:1024", "--auth-token-file", "/etc/arcbox/token",
		"--audit-log", "/var/log/arcbox-audit.log", "--registry-auth-file", "/etc/arcbox/auths.json"),
		envOf(nil), nil, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	got := forbiddenPaths(c)
	for _, want := range []string{
		"/r/agent.sock", "/r/agent.sock.docker", "/r/docker.sock", "/r/containerd.sock", "/r/data", "/r/docker", "/r/containerd",
		"/r/containerd-state", "/r/docker-exec", "/r/disk", "/r/log", "/r/bin", "/etc/arcbox/token", "/var/log/arcbox-audit.log",
		"/etc/arcbox/auths.json",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("forbidden paths %v lack %s", got, want)
		}
	}
}

// TestRunDockerProxyOnTCPWithToken: with a token, the agent serves its
// Docker proxy on TCP, and each connection must open with the token: a
// request without it is a 401 with the Bearer challenge, one with it
// reaches the proxy's dockerd side (here a 502: no dockerd runs). No log
// line holds the token.
func TestRunDockerProxyOnTCPWithToken(t *testing.T) {
	dir := t.TempDir()
	sock := agenttest.Socket(dir)
	port := agenttest.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runErr(ctx, agenttest.Flags(dir, "--set-clock=false", "--log-level", "debug",
			"--docker-listen", fmt.Sprintf("tcp://127.0.0.1:%d", port), "--auth-token-file", tokenFile(t, testToken, 0o600)),
			noEnv, io.Discard, logs)
	}()
	waitDial(t, sock)
	// The control socket is bound before the Docker listener: wait for
	// readyz, which answers 200 once every listener is.
	unix := &http.Client{Transport: agenttest.UnixTransport(sock)}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(2 * time.Millisecond) {
		resp, err := unix.Get("http://agent/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent was not ready within a minute: %v", err)
		}
	}

	tcp := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	url := fmt.Sprintf("http://127.0.0.1:%d/_ping", port)
	for _, tt := range []struct {
		name, auth string
		want       int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "Bearer " + strings.ToUpper(testToken), http.StatusUnauthorized},
		{"right token", "Bearer " + testToken, http.StatusBadGateway},
	} {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		resp, err := tcp.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: %s %q, want %d", tt.name, resp.Status, body, tt.want)
		}
		if tt.want == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != `Bearer realm="arcbox-agent"` {
			t.Errorf("%s: WWW-Authenticate %q, want the Bearer challenge", tt.name, resp.Header.Get("WWW-Authenticate"))
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), testToken) {
		t.Errorf("the log holds the token:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "refused a Docker API connection") {
		t.Errorf("the log does not tell of the refused connections:\n%s", logs.String())
	}
}
