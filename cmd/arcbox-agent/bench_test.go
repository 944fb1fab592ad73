package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// pinger sends one ping and waits for its answer.
type pinger interface {
	ping() error
}

type httpPinger struct {
	client *http.Client
	url    string
}

func (p httpPinger) ping() error {
	resp, err := p.client.Get(p.url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}

func newHTTPPinger(network, addr, path string) httpPinger {
	tr := &http.Transport{
		MaxIdleConnsPerHost: 16,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	return httpPinger{client: &http.Client{Transport: tr}, url: "http://bench" + path}
}

// qgaPinger speaks qemu-guest-agent's JSON protocol over its unix socket.
// qemu-ga serves one connection and one request at a time, so concurrent
// clients share the connection, in turn.
type qgaPinger struct {
	mu sync.Mutex
	c  net.Conn
	r  *bufio.Reader
}

func (q *qgaPinger) ping() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, err := io.WriteString(q.c, `{"execute":"guest-ping"}`+"\n"); err != nil {
		return err
	}
	line, err := q.r.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(line, `"return"`) {
		return fmt.Errorf("qemu-ga answered %q", line)
	}
	return nil
}

// runPings measures one peer: sequential, reporting the p50 latency, or
// with 8 concurrent clients, reporting throughput.
func runPings(b *testing.B, p pinger, concurrent bool) {
	for range 50 { // warm up connections
		if err := p.ping(); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	if !concurrent {
		lat := make([]time.Duration, 0, b.N)
		for range b.N {
			t0 := time.Now()
			if err := p.ping(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	} else {
		b.SetParallelism(8 / max(1, runtimeProcs()))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := p.ping(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
}

func runtimeProcs() int { return testingProcs }

// testingProcs is GOMAXPROCS, read once; RunParallel starts
// parallelism×GOMAXPROCS goroutines, and 8 clients are wanted.
var testingProcs = func() int { n, _ := strconv.Atoi(os.Getenv("GOMAXPROCS")); return max(n, numCPU()) }()

// BenchmarkPing compares GET /v1/ping through the agent's router and
// middleware with a bare net/http handler answering the same JSON and with
// qemu-guest-agent's guest-ping, over a unix socket and TCP, one client and
// eight, all from this one Go client.
func BenchmarkPing(b *testing.B) {
	dir := b.TempDir()
	agentSock := agenttest.Socket(dir)
	agentPort := agenttest.FreePort(b)
	runAgent(b, agenttest.Flags(dir, "--listen", fmt.Sprintf("tcp://127.0.0.1:%d", agentPort), "--insecure-loopback", "--set-clock=false", "--log-level", "error"), io.Discard)
	waitDial(b, agentSock)

	bare := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"message":"pong","version":"dev"}`+"\n")
	})
	bareSock := filepath.Join(dir, "bare.sock")
	bareUnix, err := net.Listen("unix", bareSock)
	if err != nil {
		b.Fatal(err)
	}
	bareTCP, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	bareSrv := &http.Server{Handler: bare}
	go func() { _ = bareSrv.Serve(bareUnix) }()
	go func() { _ = bareSrv.Serve(bareTCP) }()
	b.Cleanup(func() { _ = bareSrv.Close() })

	peers := []struct {
		name string
		p    pinger
	}{
		{"agent/unix", newHTTPPinger("unix", agentSock, "/v1/ping")},
		{"bare/unix", newHTTPPinger("unix", bareSock, "/v1/ping")},
		{"agent/tcp", newHTTPPinger("tcp", fmt.Sprintf("127.0.0.1:%d", agentPort), "/v1/ping")},
		{"bare/tcp", newHTTPPinger("tcp", bareTCP.Addr().String(), "/v1/ping")},
	}
	if qga := startQGA(b, dir); qga != nil {
		peers = append(peers, struct {
			name string
			p    pinger
		}{"qemu-ga/unix", qga})
	}
	for _, peer := range peers {
		b.Run(peer.name+"/seq", func(b *testing.B) { runPings(b, peer.p, false) })
		b.Run(peer.name+"/8clients", func(b *testing.B) { runPings(b, peer.p, true) })
	}
}

func startQGA(b *testing.B, dir string) *qgaPinger {
	bin := testenv.RequireBinary(b, "qemu-ga")
	sock := filepath.Join(dir, "qga.sock")
	cmd := exec.Command(bin, "-m", "unix-listen", "-p", sock, "-t", dir, "-f", filepath.Join(dir, "qga.pid"))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			return &qgaPinger{c: c, r: bufio.NewReader(c)}
		}
		if time.Now().After(deadline) {
			b.Fatalf("qemu-ga never listened: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

var listenEnd = regexp.MustCompile(`arcbox_agent_startup_phase_end_seconds\{phase="listen_control_unix"\} ([0-9.e+-]+)`)

// BenchmarkStartup execs the agent binary and reports how soon after exec
// its first listener was bound (from the startup metric, and as the time
// until a client could connect), and its resident memory once idle.
func BenchmarkStartup(b *testing.B) {
	bin := agenttest.Binary(b)
	var metricSum, dialSum time.Duration
	var rssMax int64
	b.ResetTimer()
	for range b.N {
		dir := b.TempDir()
		sock := agenttest.Socket(dir)
		cmd := exec.Command(bin, agenttest.Flags(dir, "--log-level", "error")...)
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		for {
			c, err := net.Dial("unix", sock)
			if err == nil {
				c.Close()
				break
			}
			if time.Since(t0) > 10*time.Second {
				b.Fatal("agent never listened")
			}
			time.Sleep(50 * time.Microsecond)
		}
		dialSum += time.Since(t0)
		p := newHTTPPinger("unix", sock, "/metrics")
		resp, err := p.client.Get(p.url)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := listenEnd.FindSubmatch(body)
		if m == nil {
			b.Fatalf("no listen phase in metrics:\n%s", body)
		}
		secs, _ := strconv.ParseFloat(string(m[1]), 64)
		metricSum += time.Duration(secs * float64(time.Second))
		for range 10 {
			if err := newHTTPPinger("unix", sock, "/v1/ping").ping(); err != nil {
				b.Fatal(err)
			}
		}
		if rss := vmRSS(b, cmd.Process.Pid); rss > rssMax {
			rssMax = rss
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("agent exit: %v", err)
		}
	}
	b.ReportMetric(float64(metricSum.Microseconds())/1e3/float64(b.N), "ms-to-listen(metric)")
	b.ReportMetric(float64(dialSum.Microseconds())/1e3/float64(b.N), "ms-to-dial")
	b.ReportMetric(float64(rssMax)/(1<<20), "idle-RSS-MiB")
}

func vmRSS(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func numCPU() int { return runtime.GOMAXPROCS(0) }
