package dockerproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
)

// pingServer is a tiny dockerd stand-in answering GET /_ping with OK.
func pingServer(b *testing.B, path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		// A failed write shows up as a wrong body, which benchPing checks.
		_, _ = io.WriteString(w, "OK")
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	b.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			b.Errorf("Serve: %v", err)
		}
	})
}

func unixClient(path string, keepAlive bool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: !keepAlive,
	}}
}

func benchPing(b *testing.B, client *http.Client) {
	b.ReportAllocs()
	for b.Loop() {
		resp, err := client.Get("http://docker/_ping")
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "OK" {
			b.Fatalf("ping: %q", body)
		}
	}
}

// BenchmarkPing measures GET /_ping against a fake dockerd, straight to its
// socket and through the proxy, on one kept-alive connection and with a new
// connection per request (as each docker CLI run opens its own).
func BenchmarkPing(b *testing.B) {
	dir := shortDir(b)
	sock := filepath.Join(dir, "docker.sock")
	pingServer(b, sock)
	h := startProxy(b, "unix", sock)
	for _, keepAlive := range []bool{true, false} {
		name := "keepalive"
		if !keepAlive {
			name = "newconn"
		}
		b.Run(name+"/direct", func(b *testing.B) { benchPing(b, unixClient(sock, keepAlive)) })
		b.Run(name+"/proxy", func(b *testing.B) { benchPing(b, unixClient(h.addr, keepAlive)) })
	}
}

const bulkSize = 1 << 30

// bulkServer is a dockerd stand-in for bulk transfers: a connection that
// starts with "sink\n" has everything after it read and discarded, then its
// count answered; one that starts with "source N\n" is sent N bytes.
func bulkServer(b *testing.B, path string) {
	fakeServer(b, path, func(c *net.UnixConn) {
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		buf := make([]byte, 256<<10)
		if line == "sink\n" {
			n, _ := io.CopyBuffer(io.Discard, r, buf)
			fmt.Fprintf(c, "%d", n)
			return
		}
		var n int64
		if _, err := fmt.Sscanf(line, "source %d\n", &n); err != nil {
			return // the client sees no bytes and fails
		}
		for n > 0 {
			m, err := c.Write(buf[:min(int64(len(buf)), n)])
			if err != nil {
				return
			}
			n -= int64(m)
		}
		// On failure fakeServer closes the connection when this returns.
		_ = c.CloseWrite()
	})
}

func benchUpload(b *testing.B, addr string) {
	buf := make([]byte, 256<<10)
	b.SetBytes(bulkSize)
	for b.Loop() {
		c, err := net.Dial("unix", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.WriteString(c, "sink\n"); err != nil {
			b.Fatal(err)
		}
		for n := 0; n < bulkSize; n += len(buf) {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := c.(*net.UnixConn).CloseWrite(); err != nil {
			b.Fatal(err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if n, _ := strconv.Atoi(string(got)); n != bulkSize {
			b.Fatalf("sink got %s bytes, want %d", got, bulkSize)
		}
	}
}

func benchDownload(b *testing.B, addr string) {
	buf := make([]byte, 256<<10)
	b.SetBytes(bulkSize)
	for b.Loop() {
		c, err := net.Dial("unix", addr)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(c, "source %d\n", bulkSize)
		n, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, buf)
		c.Close()
		if n != bulkSize {
			b.Fatalf("got %d bytes, want %d", n, bulkSize)
		}
	}
}

// BenchmarkBulk moves 1 GiB to a fake dockerd (upload: docker load, build
// contexts) and from it (download: docker save, cp), straight and through
// the proxy.
func BenchmarkBulk(b *testing.B) {
	dir := shortDir(b)
	sock := filepath.Join(dir, "docker.sock")
	bulkServer(b, sock)
	h := startProxy(b, "unix", sock)
	b.Run("upload/direct", func(b *testing.B) { benchUpload(b, sock) })
	b.Run("upload/proxy", func(b *testing.B) { benchUpload(b, h.addr) })
	b.Run("download/direct", func(b *testing.B) { benchDownload(b, sock) })
	b.Run("download/proxy", func(b *testing.B) { benchDownload(b, h.addr) })
}
