//go:build unix

package httpapi_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/rawhttp"
)

// BenchmarkPing serves GET /v1/ping over a unix socket through the whole
// router (trace id, access log at the agent's default level, request
// metrics, audit, auth, body limit, the real handler) beside a bare
// net/http handler answering the same JSON, each asked by a raw
// keep-alive HTTP/1.1 client: the request's bytes written, the response
// read by its Content-Length. One connection, then eight at once; then
// POST /v1/ping on one.
// allocs/op counts the server's allocations (the client makes none).
//
//	go test ./httpapi -run '^$' -bench Ping -benchtime 20000x -count 3
func BenchmarkPing(b *testing.B) {
	log, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = log.Close() })
	// The agent's default: JSON (its log is not a terminal) at info.
	logger := slog.New(slog.NewJSONHandler(log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	router := httpapi.NewRouter(httpapi.RouterConfig{
		API:          handlers.New(handlers.Config{Version: "dev", Logger: logger}),
		Logger:       logger,
		Registerer:   prometheus.NewRegistry(),
		StreamedBody: handlers.StreamedBody,
	})
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // a POST's
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"message":"pong","version":"dev"}`+"\n")
	})
	socks := map[string]string{"router": serveUnix(b, router), "bare": serveUnix(b, bare)}
	get := []byte("GET /v1/ping HTTP/1.1\r\nHost: agent\r\n\r\n")
	for _, conns := range []int{1, 8} {
		for _, name := range []string{"bare", "router"} {
			b.Run(fmt.Sprintf("%s/conns=%d", name, conns), func(b *testing.B) {
				benchRaw(b, socks[name], get, conns)
			})
		}
	}
	// POST /v1/ping with a message: the body's limit and deadline, its
	// decoding, and the audit line a POST gets.
	post := []byte("POST /v1/ping HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"message\":\"hi\"}")
	for _, name := range []string{"bare", "router"} {
		b.Run(name+"/post", func(b *testing.B) { benchRaw(b, socks[name], post, 1) })
	}
}

// serveUnix serves h on a fresh unix socket as the agent does (a
// PeerListener, ConnContext, its timeouts) and returns the socket's path.
func serveUnix(b *testing.B, h http.Handler) string {
	dir, err := os.MkdirTemp("", "httpapi-bench")
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{
		Handler:           h,
		ConnContext:       httpapi.ConnContext,
		ReadHeaderTimeout: httpapi.ReadHeaderTimeout,
		IdleTimeout:       httpapi.IdleTimeout,
	}
	go func() {
		_ = srv.Serve(httpapi.PeerListener(ln, httpapi.Endpoint{URL: "unix://" + path, Scheme: "unix", Address: path}))
	}()
	b.Cleanup(func() {
		_ = srv.Close()
		_ = os.RemoveAll(dir)
	})
	return path
}

// benchRaw sends b.N requests over conns keep-alive connections at once,
// and reports the median round trip beside ns/op (the wall time over
// every connection: 1e9/ns-per-op is the rate) and the CPU time per
// request.
func benchRaw(b *testing.B, sock string, req []byte, conns int) {
	clients := make([]*rawhttp.Client, conns)
	for i := range clients {
		c, err := rawhttp.Dial("unix", sock, req)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if err := c.Do(); err != nil { // warm: the server's per-connection state
			b.Fatal(err)
		}
		clients[i] = c
	}
	took := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for _, c := range clients {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				start := time.Now()
				if err := c.Do(); err != nil {
					errs <- err
					return
				}
				took[i] = time.Since(start)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	cpu := cpuTime() - cpu0
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds())/1e3, "p50-µs")
	// CPU time (client and server) per request: steadier than wall time
	// on a busy machine.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
