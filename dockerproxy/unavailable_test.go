package dockerproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// httpClient is a client of the proxy at h, one connection per request.
func httpClient(h *harness) *http.Client {
	return &http.Client{
		Timeout: time.Minute,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, h.ln.Addr().Network(), h.addr)
			},
		},
	}
}

// check502 checks a response is the proxy's answer for a dockerd that
// cannot be reached for the reason given.
func check502(t *testing.T, resp *http.Response, reason string) {
	t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("answer: %s, Content-Type %q; want 502 Bad Gateway, application/json", resp.Status, resp.Header.Get("Content-Type"))
	}
	var e struct{ Message string }
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("body %q: %v, want {\"message\": ...}", body, err)
	}
	for _, want := range []string{"cannot reach dockerd", reason, "/v1/runtime/ensure"} {
		if !strings.Contains(e.Message, want) {
			t.Errorf("message %q lacks %q", e.Message, want)
		}
	}
}

// TestDockerdDownAnswers502: while dockerd's socket is missing or refuses
// connections, every request gets a Docker-style JSON error with 502 (a
// HEAD without its body; a POST whose body the proxy never reads, too);
// once dockerd is back, connections are proxied again.
func TestDockerdDownAnswers502(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			dir := shortDir(t)
			sock := filepath.Join(dir, "docker.sock")
			h := startProxy(t, network, sock)
			c := httpClient(h)

			resp, err := c.Get("http://docker/v1.41/version")
			if err != nil {
				t.Fatal(err)
			}
			check502(t, resp, "no such file or directory")

			// A body the proxy does not read does not cost the answer.
			resp, err = c.Post("http://docker/v1.41/containers/create", "application/json", bytes.NewReader(bytes.Repeat([]byte("x"), 256<<10)))
			if err != nil {
				t.Fatal(err)
			}
			check502(t, resp, "no such file or directory")

			resp, err = c.Head("http://docker/_ping")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusBadGateway || resp.ContentLength <= 0 {
				t.Errorf("HEAD: %s, Content-Length %d; want 502 with the length of the body not sent", resp.Status, resp.ContentLength)
			}
			resp.Body.Close()

			// A socket file nobody listens on: refused.
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close()
			resp, err = c.Get("http://docker/_ping")
			if err != nil {
				t.Fatal(err)
			}
			check502(t, resp, "connection refused")
			if got := testutil.ToFloat64(h.proxy.dialFailures); got != 4 {
				t.Errorf("dial_failures_total: %v, want 4", got)
			}
			if got := testutil.ToFloat64(h.proxy.open); got != 0 {
				t.Errorf("connections_open: %v, want 0", got)
			}

			// dockerd back: proxied again.
			os.Remove(sock)
			fakeServer(t, sock, echo)
			conn := h.dial(t)
			if _, err := conn.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 4)
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != "ping" {
				t.Fatalf("after dockerd came back: got %q, %v", got, err)
			}
		})
	}
}

// TestDockerdDownClientSilentOrPartial: a client that sends nothing and
// leaves gets no answer; a head cut short, by the client's EOF or by the
// head's deadline, is answered all the same.
func TestDockerdDownClientSilentOrPartial(t *testing.T) {
	dir := shortDir(t)
	h := startProxy(t, "unix", filepath.Join(dir, "docker.sock"))

	c := h.dial(t)
	closeWrite(t, c)
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("a client that sent nothing: got %q, %v; want EOF and no answer", b, err)
	}

	c = h.dial(t)
	if _, err := c.Write([]byte("GET /_ping HTTP/1.1\r\nHost: do")); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, c)
	b, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(b, []byte("HTTP/1.1 502 Bad Gateway\r\n")) {
		t.Fatalf("a client that sent half a head: got %q, %v; want the 502 answer", b, err)
	}

	// A client that stalls mid-head: answered when the head's deadline
	// passes (set short here; the test does not time it). Its bytes are
	// there before the proxy accepts, so the deadline cannot pass first.
	dir = shortDir(t)
	h, serve := startProxyLater(t, "unix", filepath.Join(dir, "docker.sock"), func(p *Proxy) { p.headTimeout = time.Millisecond })
	c = h.dial(t)
	if _, err := c.Write([]byte("GET /_ping HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	serve()
	b, err = io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(b, []byte("HTTP/1.1 502 Bad Gateway\r\n")) {
		t.Fatalf("a client that stalled mid-head: got %q, %v; want the 502 answer", b, err)
	}
}

// TestDockerCLIPrintsTheProxyError: the docker CLI pointed at the proxy
// while dockerd is down fails with the proxy's message.
func TestDockerCLIPrintsTheProxyError(t *testing.T) {
	docker := testenv.RequireBinary(t, "docker")
	dir := shortDir(t)
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			h := startProxy(t, network, filepath.Join(dir, network+"-docker.sock"))
			host := "unix://" + h.addr
			if network == "tcp" {
				host = "tcp://" + h.addr
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, docker, "ps")
			cmd.Env = append(os.Environ(), "DOCKER_HOST="+host, "DOCKER_CONFIG="+filepath.Join(dir, "docker-config"))
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("docker ps with dockerd down succeeded: %s", out)
			}
			t.Logf("docker ps: %v: %s", err, out)
			if !strings.Contains(string(out), "arcbox agent: cannot reach dockerd: dial unix "+h.socket) {
				t.Errorf("docker ps printed %q, want the proxy's message", out)
			}
		})
	}
}
