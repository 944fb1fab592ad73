package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/api"
)

const testToken = "0123456789abcdefghijklmnopqrstuvwxyzABCD" // 40 characters

// okAPI answers the few operations the auth and audit tests call.
type okAPI struct{ api.Unimplemented }

func (okAPI) GetPing(w http.ResponseWriter, _ *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]string{"message": "pong"})
}
func (okAPI) PostPing(w http.ResponseWriter, _ *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]string{"message": "pong"})
}
func (okAPI) RemoveSandbox(w http.ResponseWriter, _ *http.Request, _ api.SandboxID, _ api.RemoveSandboxParams) {
	w.WriteHeader(http.StatusNoContent)
}

// newAuthRouter is the router with testToken, its access log and audit
// log both written to logs.
func newAuthRouter(logs io.Writer) http.Handler {
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return NewRouter(RouterConfig{API: okAPI{}, Logger: logger, Registerer: prometheus.NewRegistry(), Token: testToken})
}

// serveOn serves h on ln as main does: peers labelled, ConnContext set.
func serveOn(t *testing.T, h http.Handler, ln net.Listener, ep Endpoint) {
	t.Helper()
	srv := &http.Server{Handler: h, ConnContext: ConnContext}
	go func() { _ = srv.Serve(PeerListener(ln, ep)) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// serveTCP serves h on a loopback TCP port and returns its base URL.
func serveTCP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, h, ln, Endpoint{URL: "tcp://" + ln.Addr().String(), Scheme: "tcp", Address: ln.Addr().String()})
	return "http://" + ln.Addr().String()
}

// serveUnix serves h on a unix socket the way the agent binds one and
// returns a client for it.
func serveUnix(t *testing.T, h http.Handler) *http.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := listenUnix(sock, NoGroup)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, h, ln, Endpoint{URL: "unix://" + sock, Scheme: "unix", Address: sock})
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func do(t *testing.T, c *http.Client, method, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func bearerHeader(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

func TestAuthOnTCP(t *testing.T) {
	var logs lockedWriter
	base := serveTCP(t, newAuthRouter(&logs))
	tests := []struct {
		name    string
		path    string
		header  http.Header
		wantMsg string // "" for a 200
	}{
		{"no Authorization header", "/v1/ping", nil, "no Authorization header"},
		{"wrong token", "/v1/ping", bearerHeader("x" + testToken[1:]), "wrong bearer token"},
		{"wrong length", "/v1/ping", bearerHeader(testToken + "x"), "wrong bearer token"},
		{"empty bearer", "/v1/ping", http.Header{"Authorization": {"Bearer "}}, "wrong bearer token"},
		{"Basic scheme", "/v1/ping", http.Header{"Authorization": {"Basic " + testToken}}, "not a Bearer token"},
		{"token without a scheme", "/v1/ping", http.Header{"Authorization": {testToken}}, "not a Bearer token"},
		{"two headers", "/v1/ping", http.Header{"Authorization": {"Bearer " + testToken, "Bearer " + testToken}}, "more than one"},
		{"access_token in the query", "/v1/ping?access_token=" + testToken, nil, "never authenticates"},
		{"token parameter in the query", "/v1/ping?token=" + testToken, nil, "never authenticates"},
		{"token as any query value", "/v1/runtime/logs?service=" + testToken, nil, "never authenticates"},
		{"token in the query beside a right header", "/v1/ping?access_token=" + testToken, bearerHeader(testToken), "never authenticates"},
		{"no token on an unknown route", "/nowhere", nil, "no Authorization header"},
		{"no token on a probe", "/livez", nil, "no Authorization header"},
		{"right token", "/v1/ping", bearerHeader(testToken), ""},
		{"right token, scheme in lower case", "/v1/ping", http.Header{"Authorization": {"bearer " + testToken}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, http.DefaultClient, http.MethodGet, base+tt.path, tt.header)
			if tt.wantMsg == "" {
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d %s, want 200", resp.StatusCode, body)
				}
				return
			}
			var e Error
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("401 body is not the error shape: %v: %s", err, body)
			}
			if resp.StatusCode != http.StatusUnauthorized || e.Code != http.StatusUnauthorized || !strings.Contains(e.Message, tt.wantMsg) {
				t.Errorf("got %d %+v, want 401 saying %q", resp.StatusCode, e, tt.wantMsg)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="arcbox-agent"` {
				t.Errorf("WWW-Authenticate = %q", got)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if strings.Contains(string(body), testToken) {
				t.Errorf("the 401 echoes the token: %s", body)
			}
		})
	}
	if strings.Contains(logs.String(), testToken) {
		t.Errorf("a log line holds the token:\n%s", logs.String())
	}
}

// TestAuthFailsClosed: a connection whose transport the router does not
// know (no PeerListener) needs the token like TCP; without a token
// configured every request is let in.
func TestAuthFailsClosed(t *testing.T) {
	srv := httptest.NewServer(newAuthRouter(io.Discard))
	defer srv.Close()
	if resp, body := do(t, srv.Client(), http.MethodGet, srv.URL+"/v1/ping", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unlabelled connection without a token: %d %s, want 401", resp.StatusCode, body)
	}
	open := NewRouter(RouterConfig{API: okAPI{}, Logger: quiet, Registerer: prometheus.NewRegistry()})
	if resp, body := do(t, http.DefaultClient, http.MethodGet, serveTCP(t, open)+"/v1/ping", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("no token configured: %d %s, want 200", resp.StatusCode, body)
	}
}

func TestUnixAndVsockNeedNoToken(t *testing.T) {
	h := newAuthRouter(io.Discard)
	c := serveUnix(t, h)
	if resp, body := do(t, c, http.MethodGet, "http://agent/v1/ping", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("unix socket without a token: %d %s, want 200", resp.StatusCode, body)
	}
	// A token in the URL is refused on any transport: it would be logged.
	if resp, _ := do(t, c, http.MethodGet, "http://agent/v1/ping?x="+testToken, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unix socket with the token in the URL: %d, want 401", resp.StatusCode)
	}
	// vsock: no vsock device in tests, so the request carries the peer a
	// vsock PeerListener would give it (the CID filter is tested with
	// the listeners).
	req := httptest.NewRequest(http.MethodGet, "/v1/ping", nil)
	req = req.WithContext(context.WithValue(req.Context(), peerKey{}, Peer{Listener: "vsock://:1024", Transport: "vsock", CID: HostCID}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("vsock without a token: %d %s, want 200", rec.Code, rec.Body)
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	got, err := ReadTokenFile(write("good", "\n  "+testToken+"\n", 0o600))
	if err != nil || got != testToken {
		t.Errorf("good file: %q %v", got, err)
	}
	short := "tooshort-but-secret"
	for _, tt := range []struct {
		name, path, want string
	}{
		{"short", write("short", short+"\n", 0o600), "19 characters; want at least 32"},
		{"group-readable", write("loose", testToken, 0o640), "mode 0640"},
		{"world-readable", write("open", testToken, 0o644), "mode 0644"},
		{"inner space", write("space", testToken+" "+testToken, 0o600), "printable ASCII"},
		{"missing", filepath.Join(dir, "none"), "no such file"},
		{"a directory", dir, "not a regular file"},
	} {
		_, err := ReadTokenFile(tt.path)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want one saying %q", tt.name, err, tt.want)
		}
		if err != nil && (strings.Contains(err.Error(), testToken) || strings.Contains(err.Error(), short)) {
			t.Errorf("%s: the error holds the token: %v", tt.name, err)
		}
	}
}

// benchAuth runs the whole router on one request with the given
// Authorization header: the refusals must cost what a success does.
func benchAuth(b *testing.B, header string) {
	h := NewRouter(RouterConfig{API: okAPI{}, Logger: quiet, Registerer: prometheus.NewRegistry(), Token: testToken})
	req := httptest.NewRequest(http.MethodGet, "/v1/ping", nil)
	req.Header.Set("Authorization", header)
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
}

func BenchmarkAuthRightToken(b *testing.B) { benchAuth(b, "Bearer "+testToken) }
func BenchmarkAuthWrongToken(b *testing.B) { benchAuth(b, "Bearer x"+testToken[1:]) }
func BenchmarkAuthWrongLengthToken(b *testing.B) {
	benchAuth(b, "Bearer "+testToken+testToken)
}

// lockedWriter collects log lines written from the server's goroutines.
type lockedWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
