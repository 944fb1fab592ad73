package dockerproxy

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
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/arcbox/arcbox-agent/httpapi/bearer"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

const testToken = "e2e-proxy-token-0123456789abcdefghijklmnop"

// withToken configures the proxy's token, as Config.Token does.
func withToken(token string) func(*Proxy) {
	return func(p *Proxy) { p.token = bearer.New(token) }
}

// fakeDockerd serves HTTP on a unix socket as dockerd would, enough for
// the docker CLI's ping and version, and counts the connections it
// accepted and the requests it got (with their Authorization headers).
type fakeDockerd struct {
	conns atomic.Int64
	mu    sync.Mutex
	reqs  []string // "METHOD PATH auth=<Authorization>"
}

func (f *fakeDockerd) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func startFakeDockerd(t testing.TB, path string) *fakeDockerd {
	t.Helper()
	f := &fakeDockerd{}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.mu.Lock()
			f.reqs = append(f.reqs, fmt.Sprintf("%s %s auth=%s", r.Method, r.URL.Path, r.Header.Get("Authorization")))
			f.mu.Unlock()
			w.Header().Set("Api-Version", "1.41")
			w.Header().Set("Content-Type", "application/json")
			switch {
			case r.URL.Path == "/_ping":
				_, _ = io.WriteString(w, "OK")
			case strings.HasSuffix(r.URL.Path, "/version"):
				_ = json.NewEncoder(w).Encode(map[string]string{"Version": "fake-dockerd", "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux", "Arch": "amd64"})
			default:
				_, _ = fmt.Fprintf(w, "{\"path\": %q}\n", r.URL.Path)
			}
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				f.conns.Add(1)
			}
		},
		ReadHeaderTimeout: time.Minute,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f
}

// rawRequest sends req on a fresh connection to the proxy and reads the
// answer, then checks the proxy closed the connection.
func rawRequest(t *testing.T, h *harness, req string) (*http.Response, []byte) {
	t.Helper()
	c := h.dial(t)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(req, " ")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read the answer to %q: %v", req, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the answer: %q, %v; want the connection closed", rest, err)
	}
	return resp, body
}

// TestTokenRefusals: on TCP with a token, a connection whose first
// request lacks the right bearer token gets a 401 in dockerd's error
// shape with a Bearer challenge and is closed; dockerd never hears of it.
func TestTokenRefusals(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	up := startFakeDockerd(t, sock)
	h := startProxy(t, "tcp", sock, withToken(testToken))
	cases := []struct {
		name, head, want string
	}{
		{"no header", "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n", "no Authorization header"},
		{"wrong token", "GET /_ping HTTP/1.1\r\nHost: docker\r\nAuthorization: Bearer " + testToken + "x\r\n\r\n", "wrong bearer token"},
		{"empty token", "GET /_ping HTTP/1.1\r\nHost: docker\r\nAuthorization: Bearer\r\n\r\n", "wrong bearer token"},
		{"basic", "GET /_ping HTTP/1.1\r\nHost: docker\r\nAuthorization: Basic " + testToken + "\r\n\r\n", "not a Bearer token"},
		{"two headers", "GET /_ping HTTP/1.1\r\nHost: docker\r\nAuthorization: Bearer " + testToken + "\r\nAuthorization: Bearer " + testToken + "\r\n\r\n", "more than one"},
		{"token in the query", "GET /_ping?access_token=" + testToken + " HTTP/1.1\r\nHost: docker\r\nAuthorization: Bearer " + testToken + "\r\n\r\n", "in the URL"},
		{"token as a query value", "GET /v1.41/containers/json?x=" + testToken + " HTTP/1.1\r\nHost: docker\r\nAuthorization: Bearer " + testToken + "\r\n\r\n", "in the URL"},
		{"post with a body", "POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", "no Authorization header"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawRequest(t, h, tc.head)
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Bearer realm="arcbox-agent"` ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("answer: %s, headers %v; want 401 with a Bearer challenge, application/json", resp.Status, resp.Header)
			}
			var e struct{ Message string }
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil || !strings.Contains(e.Message, tc.want) {
				t.Errorf("body %q (%v): want {\"message\": ...} saying %q", body, err, tc.want)
			}
			if strings.Contains(string(body), testToken) {
				t.Errorf("the answer carries the token: %q", body)
			}
		})
	}
	// A HEAD gets the head alone.
	resp, body := rawRequest(t, h, "HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
	if resp.StatusCode != http.StatusUnauthorized || len(body) != 0 {
		t.Errorf("HEAD: %s with %d bytes of body; want 401 without one", resp.Status, len(body))
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("dockerd accepted %d connections of refused clients: %v", n, up.requests())
	}
	if got, want := testutil.ToFloat64(h.proxy.authRefused), float64(len(cases)+1); got != want {
		t.Errorf("auth_refused_total: %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(h.proxy.dialFailures); got != 0 {
		t.Errorf("dial_failures_total: %v, want 0: a refused client must not cause a dial", got)
	}
}

// TestTokenMalformedHead: a first request that cannot be read is a 400
// that names no header line (it could hold the token), and dockerd is
// never dialled; a client that sends nothing gets nothing.
func TestTokenMalformedHead(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	up := startFakeDockerd(t, sock)
	// The head's deadline is short, so the clients write before the
	// proxy accepts: it cannot pass before their bytes are there.
	h, serve := startProxyLater(t, "tcp", sock, withToken(testToken), func(p *Proxy) { p.headTimeout = time.Millisecond })
	malformed := h.dial(t)
	if _, err := io.WriteString(malformed, "GET /_ping HTTP/1.1\r\nAuthorization Bearer "+testToken+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// A head cut short by its deadline.
	stalled := h.dial(t)
	if _, err := io.WriteString(stalled, "GET /_ping HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	serve()
	b, err := io.ReadAll(malformed)
	if err != nil || !bytes.HasPrefix(b, []byte("HTTP/1.1 400 Bad Request\r\n")) || !bytes.Contains(b, []byte("malformed")) || bytes.Contains(b, []byte(testToken)) {
		t.Errorf("a malformed head: %q, %v; want a 400 saying malformed, without the line", b, err)
	}
	b, err = io.ReadAll(stalled)
	if err != nil || !bytes.HasPrefix(b, []byte("HTTP/1.1 400 Bad Request\r\n")) {
		t.Errorf("a stalled head: %q, %v; want a 400", b, err)
	}

	c := h.dial(t)
	closeWrite(t, c)
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Errorf("a client that sent nothing: %q, %v; want no answer", b, err)
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("dockerd accepted %d connections of unauthenticated clients", n)
	}
}

// TestTokenAuthenticatesTheConnection: with the right token in its first
// request, a connection is the client's: the first request and a second
// one pipelined behind it without the header both reach dockerd, byte
// for byte, and both answers come back.
func TestTokenAuthenticatesTheConnection(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	up := startFakeDockerd(t, sock)
	h := startProxy(t, "tcp", sock, withToken(testToken))

	c := h.dial(t)
	reqs := "GET /first HTTP/1.1\r\nHost: docker\r\nAuthorization: bearer " + testToken + "\r\n\r\n" +
		"POST /second HTTP/1.1\r\nHost: docker\r\nContent-Length: 5\r\n\r\nhello"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, path := range []string{"/first", "/second"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer for %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), path) {
			t.Errorf("answer for %s: %s %q", path, resp.Status, body)
		}
	}
	// And a third, later, on the same connection.
	if _, err := io.WriteString(c, "GET /third HTTP/1.1\r\nHost: docker\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a later request on the authenticated connection: %v %v", resp, err)
	}
	want := []string{"GET /first auth=bearer " + testToken, "POST /second auth=", "GET /third auth="}
	if got := up.requests(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("dockerd got %q, want %q", got, want)
	}
	if n := up.conns.Load(); n != 1 {
		t.Errorf("dockerd accepted %d connections, want 1", n)
	}
	if got := testutil.ToFloat64(h.proxy.authRefused); got != 0 {
		t.Errorf("auth_refused_total: %v, want 0", got)
	}
}

// TestTokenNotAskedOnUnixSocket: a unix socket, guarded by its mode,
// needs no token even when one is configured.
func TestTokenNotAskedOnUnixSocket(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	fakeServer(t, sock, echo)
	h := startProxy(t, "unix", sock, withToken(testToken))
	c := h.dial(t)
	msg := []byte("GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo over the unix socket: %q, %v; want %q", got, err, msg)
	}
}

// TestTokenDockerdDown: an authenticated client still gets the 502 when
// dockerd cannot be reached; an unauthenticated one learns nothing of
// dockerd.
func TestTokenDockerdDown(t *testing.T) {
	dir := shortDir(t)
	h := startProxy(t, "tcp", filepath.Join(dir, "docker.sock"), withToken(testToken))
	resp, body := rawRequest(t, h, "GET /_ping HTTP/1.1\r\nHost: docker\r\nAuthorization: Bearer "+testToken+"\r\n\r\n")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "cannot reach dockerd") {
		t.Errorf("with the token, dockerd down: %s %q; want the 502", resp.Status, body)
	}
	resp, body = rawRequest(t, h, "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
	if resp.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), "dockerd") {
		t.Errorf("without the token, dockerd down: %s %q; want a 401 that does not mention dockerd", resp.Status, body)
	}
}

// writeDockerConfig writes a docker CLI config dir whose HttpHeaders
// carry the token, and returns it.
func writeDockerConfig(t *testing.T, token string) string {
	t.Helper()
	dir := t.TempDir()
	cfg, err := json.Marshal(map[string]any{"HttpHeaders": map[string]string{"Authorization": "Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestTokenDockerCLI: the docker CLI through the proxy on TCP: without
// the header it prints the proxy's 401; with the token in its config's
// HttpHeaders it reaches dockerd, sending the header on each request.
func TestTokenDockerCLI(t *testing.T) {
	docker := testenv.RequireBinary(t, "docker")
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	up := startFakeDockerd(t, sock)
	h := startProxy(t, "tcp", sock, withToken(testToken))
	run := func(config string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, docker, "version", "--format", "{{.Server.Version}}")
		cmd.Env = append(os.Environ(), "DOCKER_HOST=tcp://"+h.addr, "DOCKER_CONFIG="+config)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	out, err := run(t.TempDir())
	if err == nil || !strings.Contains(out, "no Authorization header") {
		t.Errorf("docker version without the token: %v, %q; want the proxy's 401 message", err, out)
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("dockerd accepted %d connections of the CLI without the token", n)
	}

	out, err = run(writeDockerConfig(t, testToken+"-wrong"))
	if err == nil || !strings.Contains(out, "wrong bearer token") {
		t.Errorf("docker version with a wrong token: %v, %q; want the proxy's 401 message", err, out)
	}

	out, err = run(writeDockerConfig(t, testToken))
	if err != nil || strings.TrimSpace(out) != "fake-dockerd" {
		t.Fatalf("docker version with the token: %v, %q; want the fake dockerd's version", err, out)
	}
	reqs := up.requests()
	if len(reqs) < 2 {
		t.Errorf("dockerd got %q; want the CLI's ping and version", reqs)
	}
	for _, r := range reqs {
		if !strings.HasSuffix(r, "auth=Bearer "+testToken) {
			t.Errorf("a request of the CLI without its HttpHeaders: %q", r)
		}
	}
}
