package dockerproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// shortDir returns a temporary directory whose paths fit a unix socket
// address (108 bytes), removed when the test ends.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// fakeServer serves each connection on a unix socket with handle, and
// closes everything when the test ends.
func fakeServer(t testing.TB, path string, handle func(c *net.UnixConn)) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c.(*net.UnixConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// echo copies what it reads back until EOF, then half-closes. It reports
// nothing itself: each test checks what its client gets back, and fakeServer
// closes the connection when echo returns.
func echo(c *net.UnixConn) {
	if _, err := io.Copy(c, c); err != nil {
		return
	}
	_ = c.CloseWrite()
}

type harness struct {
	socket string // the fake dockerd's socket
	proxy  *Proxy
	reg    *prometheus.Registry
	ln     net.Listener
	addr   string // the proxy's listener
	cancel context.CancelFunc
	served chan error
}

// startProxy serves a Proxy to socket on a fresh unix (or tcp) listener,
// after tweaks change it.
func startProxy(t testing.TB, network, socket string, tweaks ...func(*Proxy)) *harness {
	t.Helper()
	h, serve := startProxyLater(t, network, socket, tweaks...)
	serve()
	return h
}

// startProxyLater is startProxy with the serving left to the function it
// returns: a client can connect and write first, so that the proxy finds
// its bytes there at accept, whatever the machine's load.
func startProxyLater(t testing.TB, network, socket string, tweaks ...func(*Proxy)) (*harness, func()) {
	t.Helper()
	h := &harness{socket: socket, reg: prometheus.NewRegistry(), served: make(chan error, 1)}
	p, err := New(Config{Socket: socket, Registerer: h.reg, DialTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, tweak := range tweaks {
		tweak(p)
	}
	h.proxy = p
	switch network {
	case "unix":
		h.addr = filepath.Join(filepath.Dir(socket), "proxy.sock")
		h.ln, err = net.Listen("unix", h.addr)
	case "tcp":
		h.ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			h.addr = h.ln.Addr().String()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	serve := func() {
		go func() { h.served <- p.Serve(ctx, h.ln) }()
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-h.served:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(time.Minute):
				t.Error("Serve did not return after its context ended")
			}
		})
	}
	t.Cleanup(func() { h.ln.Close() })
	return h, serve
}

func (h *harness) dial(t testing.TB) net.Conn {
	t.Helper()
	c, err := net.Dial(h.ln.Addr().Network(), h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func closeWrite(t testing.TB, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

func TestNewRequiresSocket(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New with no socket: got nil error")
	}
}

func TestNewRegistersMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Socket: "/x", Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Socket: "/x", Registerer: reg}); err == nil {
		t.Fatal("second New on one registry: got nil error, want a duplicate registration error")
	}
}

func TestEchoBothDirections(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			dir := shortDir(t)
			sock := filepath.Join(dir, "docker.sock")
			fakeServer(t, sock, echo)
			h := startProxy(t, network, sock)
			c := h.dial(t)
			msg := []byte("GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("echo: got %q, want %q", got, msg)
			}
			closeWrite(t, c)
			rest, err := io.ReadAll(c)
			if err != nil || len(rest) != 0 {
				t.Fatalf("after half-close: got %q, %v; want EOF", rest, err)
			}
		})
	}
}

// TestHalfCloseFromClient: the client sends a body and half-closes, as
// docker run -i does at the end of stdin; the server reads to EOF and only
// then answers, and the client reads the whole answer.
func TestHalfCloseFromClient(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			dir := shortDir(t)
			sock := filepath.Join(dir, "docker.sock")
			fakeServer(t, sock, func(c *net.UnixConn) {
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
			})
			h := startProxy(t, network, sock)
			c := h.dial(t)
			body := make([]byte, 3<<20+17)
			rand.Read(body)
			if _, err := c.Write(body); err != nil {
				t.Fatal(err)
			}
			closeWrite(t, c)
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("%d %x", len(body), sha256.Sum256(body))
			if string(got) != want {
				t.Fatalf("answer: got %q, want %q", got, want)
			}
		})
	}
}

// TestHalfCloseFromServer: the server half-closes first (as dockerd does
// when a container's output ends) and still reads what the client sends.
func TestHalfCloseFromServer(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	gotByServer := make(chan string, 1)
	fakeServer(t, sock, func(c *net.UnixConn) {
		if _, err := c.Write([]byte("output")); err != nil {
			t.Error(err)
			return
		}
		if err := c.CloseWrite(); err != nil {
			t.Error(err)
			return
		}
		b, _ := io.ReadAll(c)
		gotByServer <- string(b)
	})
	h := startProxy(t, "unix", sock)
	c := h.dial(t)
	out, err := io.ReadAll(c)
	if err != nil || string(out) != "output" {
		t.Fatalf("client read: got %q, %v; want \"output\", EOF", out, err)
	}
	if _, err := c.Write([]byte("input after the server's EOF")); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, c)
	select {
	case s := <-gotByServer:
		if s != "input after the server's EOF" {
			t.Fatalf("server read %q", s)
		}
	case <-time.After(time.Minute):
		t.Fatal("server never saw the client's EOF")
	}
}

func TestBulkBothWaysAtOnce(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	fakeServer(t, sock, echo)
	h := startProxy(t, "unix", sock)
	c := h.dial(t)
	body := make([]byte, 16<<20)
	rand.Read(body)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(body)
		if err == nil {
			err = c.(*net.UnixConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("echoed %d bytes, sha %x; want %d bytes, sha %x", len(got), sha256.Sum256(got), len(body), sha256.Sum256(body))
	}
	waitFor(t, "the connection to end", func() bool { return testutil.ToFloat64(h.proxy.open) == 0 })
	if got, want := testutil.ToFloat64(h.proxy.toDocker), float64(len(body)); got != want {
		t.Errorf("bytes to_docker: got %v, want %v", got, want)
	}
	if got, want := testutil.ToFloat64(h.proxy.fromDocker), float64(len(body)); got != want {
		t.Errorf("bytes from_docker: got %v, want %v", got, want)
	}
}

// plainConn hides a connection's SyscallConn (so splice is not used) but
// keeps its half-close.
type plainConn struct{ *net.UnixConn }

func (c plainConn) SyscallConn() {} // shadows the embedded method: not a syscall.Conn

type plainListener struct{ net.Listener }

func (l plainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return plainConn{c.(*net.UnixConn)}, nil
}

func TestBufferedCopyWithoutSplice(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	fakeServer(t, sock, echo)
	p, err := New(Config{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	addr := filepath.Join(dir, "proxy.sock")
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, plainListener{ln}) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	c, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := make([]byte, 1<<20+3)
	rand.Read(body)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(body)
		errc <- errors.Join(err, c.(*net.UnixConn).CloseWrite())
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("echo through buffered copy: %d bytes, %v; want %d bytes back", len(got), err, len(body))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection to end", func() bool { return testutil.ToFloat64(p.open) == 0 })
	if got := testutil.ToFloat64(p.toDocker); got != float64(len(body)) {
		t.Errorf("bytes to_docker: got %v, want %v", got, len(body))
	}
}

func TestServeEndsWithContextAndClosesConnections(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	// Never answers; reading ends with an error when Serve closes the
	// connection, which is what this test expects.
	fakeServer(t, sock, func(c *net.UnixConn) { _, _ = io.Copy(io.Discard, c) })
	h := startProxy(t, "unix", sock)
	c := h.dial(t)
	if _, err := c.Write([]byte("GET /events HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection to open", func() bool { return testutil.ToFloat64(h.proxy.open) == 1 })

	h.cancel()
	select {
	case err := <-h.served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		h.served <- nil // for the cleanup
	case <-time.After(time.Minute):
		t.Fatal("Serve did not return after its context ended")
	}
	if err := c.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client read after Serve ended: %v, want the connection closed", err)
	}
	if _, err := net.Dial("unix", h.addr); err == nil {
		t.Fatal("the listener still accepts after Serve ended")
	}
}

func TestServeWaitsForConnectionsWhenListenerClosed(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	fakeServer(t, sock, echo)
	h := startProxy(t, "unix", sock)
	c := h.dial(t)
	waitFor(t, "the connection to open", func() bool { return testutil.ToFloat64(h.proxy.open) == 1 })
	h.ln.Close()

	// The connection still works, and Serve has not returned.
	if _, err := c.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 10)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "still here" {
		t.Fatalf("after the listener closed: got %q, %v", got, err)
	}
	select {
	case err := <-h.served:
		t.Fatalf("Serve returned (%v) while a connection was open", err)
	default:
	}
	closeWrite(t, c)
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: got %q, %v; want EOF", rest, err)
	}
	select {
	case err := <-h.served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		h.served <- nil
	case <-time.After(time.Minute):
		t.Fatal("Serve did not return after its last connection ended")
	}
}

// TestClientGoneClosesUpstream: a client that disappears mid-stream (logs
// -f, then ^C) closes dockerd's side too.
func TestClientGoneClosesUpstream(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	upstreamDone := make(chan error, 1)
	fakeServer(t, sock, func(c *net.UnixConn) {
		line := []byte("log line\n")
		for {
			if _, err := c.Write(line); err != nil {
				upstreamDone <- err
				return
			}
		}
	})
	h := startProxy(t, "unix", sock)
	c := h.dial(t)
	if _, err := io.ReadFull(c, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case err := <-upstreamDone:
		t.Logf("dockerd's side: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("dockerd's side was not closed after the client went away")
	}
	waitFor(t, "the connection to end", func() bool { return testutil.ToFloat64(h.proxy.open) == 0 })
}

func TestManyConnections(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "docker.sock")
	fakeServer(t, sock, echo)
	h := startProxy(t, "unix", sock)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("unix", h.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := fmt.Sprintf("connection %d", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				errs <- fmt.Errorf("connection %d: write: %w", i, err)
				return
			}
			if err := c.(*net.UnixConn).CloseWrite(); err != nil {
				errs <- fmt.Errorf("connection %d: close write: %w", i, err)
				return
			}
			got, err := io.ReadAll(c)
			if err != nil || string(got) != msg {
				errs <- fmt.Errorf("connection %d: got %q, %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, "every connection to end", func() bool { return testutil.ToFloat64(h.proxy.open) == 0 })
	if got := testutil.ToFloat64(h.proxy.total); got != 50 {
		t.Errorf("connections_total: got %v, want 50", got)
	}
}
