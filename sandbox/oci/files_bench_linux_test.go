package oci

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// filesServer serves the files API of e's manager on a unix socket
// through the agent's router and middleware (uploads stream past the
// JSON body limit, as handlers.StreamedBody picks them), and returns a
// client of it.
func filesServer(b testing.TB, e *filesEnv) (*http.Client, string) {
	a := handlers.New(handlers.Config{
		Logger: slog.New(slog.DiscardHandler),
		SandboxManager: func(context.Context) (handlers.SandboxManager, error) {
			return e.m, nil
		},
	})
	sock := filepath.Join(b.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	must(b, err)
	router := httpapi.NewRouter(httpapi.RouterConfig{API: a, Logger: slog.New(slog.DiscardHandler),
		Registerer: prometheus.NewRegistry(), StreamedBody: handlers.StreamedBody})
	srv := &http.Server{Handler: router, ReadHeaderTimeout: time.Minute, ConnContext: httpapi.ConnContext}
	go func() { _ = srv.Serve(l) }()
	b.Cleanup(func() { srv.Close() })
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		DisableCompression: true,
	}}
	return c, "http://agent/v1/sandboxes/" + e.id + "/files"
}

// pattern is an endless reader of a repeating pattern.
type pattern struct{ buf [1 << 16]byte }

func (p *pattern) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		n += copy(b[n:], p.buf[:])
	}
	return n, nil
}

func do(b *testing.B, c *http.Client, method, url string, body io.Reader, size int64, want int) {
	req, err := http.NewRequest(method, url, body)
	must(b, err)
	if body != nil {
		req.ContentLength = size
	}
	resp, err := c.Do(req)
	must(b, err)
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	must(b, err)
	if resp.StatusCode != want {
		b.Fatalf("%s %s: %d", method, url, resp.StatusCode)
	}
	if method == "GET" && size > 0 && n != size {
		b.Fatalf("GET %s: %d bytes, want %d", url, n, size)
	}
}

// BenchmarkFilesHTTP measures the files API over a unix socket against a
// real sandbox: a 1 GiB upload and download (MB/s), and stat and list
// (p50, from every iteration's time). write-1GiB-direct is the upload's
// floor on this disk: the benchmark itself writes the same bytes to a
// temporary file in the sandbox's root and renames it over the file, as
// an upload does, with no HTTP and no agent.
func BenchmarkFilesHTTP(b *testing.B) {
	e := newFilesEnv(b, "crun")
	c, base := filesServer(b, e)
	const size = 1 << 30
	e.sh(e.id, "touch /big") // so every upload replaces it: 200
	b.Run("write-1GiB-direct", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, copyBufSize)
		for b.Loop() {
			tmp := filepath.Join(e.rootfs, ".bench-tmp")
			f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			must(b, err)
			_, err = io.CopyBuffer(struct{ io.Writer }{f}, io.LimitReader(&pattern{}, size), buf)
			must(b, err)
			must(b, f.Close())
			must(b, os.Rename(tmp, filepath.Join(e.rootfs, "big")))
		}
	})
	b.Run("upload-1GiB", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			do(b, c, "PUT", base+"?path=/big", io.LimitReader(&pattern{}, size), size, http.StatusOK)
		}
	})
	b.Run("download-1GiB", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			do(b, c, "GET", base+"?path=/big", nil, size, http.StatusOK)
		}
	})
	e.sh(e.id, "mkdir /many && cd /many && for i in $(seq 100); do echo $i > f$i; done")
	for _, op := range []struct{ name, url string }{
		{"stat", base + "/stat?path=/many/f50"},
		{"list-100", base + "/list?path=/many"},
	} {
		b.Run(op.name, func(b *testing.B) {
			var times []time.Duration
			for b.Loop() {
				start := time.Now()
				do(b, c, "GET", op.url, nil, 0, http.StatusOK)
				times = append(times, time.Since(start))
			}
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "p50-ms")
		})
	}
}
