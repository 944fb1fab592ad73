package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/rawhttp"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// The benchmarks here measure the agent as a host meets it, each beside its
// peer in the same run (go test -run '^$' -bench . ./cmd/arcbox-agent/):
//
//	BenchmarkPing     GET /v1/ping over a unix socket (and TCP): the agent
//	                  binary at its default log level against a bare
//	                  net/http handler in a process of its own and
//	                  qemu-guest-agent's guest-ping, with a raw keep-alive
//	                  client and with Go's http.Client; its last
//	                  sub-benchmark, "ratios", reports agent/peer ratios
//	BenchmarkStartup  exec to the first listener bound, from the startup
//	                  metric and from just before exec, split at main;
//	                  and the agent's resident memory idle and after
//	                  10,000 pings

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

// rawPinger pings with internal/rawhttp's client: the request's bytes
// as they are, the answer read by its Content-Length, on one kept-alive
// connection. It measures the server, not a client library.
type rawPinger struct{ c *rawhttp.Client }

func (p rawPinger) ping() error { return p.c.Do() }

// qgaPinger speaks qemu-guest-agent's JSON protocol over its unix socket,
// raw as rawPinger. qemu-ga serves one connection and one request at a
// time, so concurrent clients share the connection, in turn.
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
	line, err := q.r.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.Contains(line, []byte(`"return"`)) {
		return fmt.Errorf("qemu-ga answered %q", line)
	}
	return nil
}

// pingFigures are a sub-benchmark's last figures, for the ratios.
type pingFigures struct {
	mu  sync.Mutex
	p50 map[string]float64 // µs
	qps map[string]float64
}

func (f *pingFigures) set(m map[string]float64, name string, v float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m[name] = v
}

// seqPings measures one client, one ping after another, reporting the
// p50 and p99 latency.
func seqPings(b *testing.B, p pinger, figs *pingFigures, name string) {
	for range 50 { // warm up the connection and both ends
		if err := p.ping(); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		t0 := time.Now()
		if err := p.ping(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	p50 := float64(lat[len(lat)/2].Nanoseconds()) / 1e3
	b.ReportMetric(p50, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	figs.set(figs.p50, name, p50)
}

// concurrentPings measures len(clients) clients pinging at once, each
// from its own goroutine, reporting the rate.
func concurrentPings(b *testing.B, clients []pinger, figs *pingFigures, name string) {
	for _, p := range clients {
		if err := p.ping(); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	var failed atomic.Pointer[error]
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for _, p := range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := p.ping(); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	qps := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(qps, "req/s")
	figs.set(figs.qps, name, qps)
}

// concurrency is how many clients the concurrent sub-benchmarks run.
const concurrency = 8

// BenchmarkPing compares GET /v1/ping through the agent (its binary, at
// its default log level, logging to a file) with a bare net/http handler
// answering the same JSON from a process of its own, and with
// qemu-guest-agent's guest-ping: one client and eight, each on its own
// connection (qemu-ga serves one connection: its eight share it). "raw"
// is rawPinger; "go" is Go's http.Client. The bare handler runs on every
// CPU, Go's default, and as bare-1proc on one, as the agent does by
// default (--max-procs): agent/bare is the agent against what net/http
// does out of the box, agent/bare-1proc what the agent's own code costs.
func BenchmarkPing(b *testing.B) {
	dir := b.TempDir()
	agentSock := agenttest.Socket(dir)
	agentTCP := fmt.Sprintf("127.0.0.1:%d", agenttest.FreePort(b))
	startProcess(b, agenttest.Binary(b), agenttest.Flags(dir, "--listen", "tcp://"+agentTCP, "--insecure-loopback", "--set-clock=false"),
		[]string{"GOMAXPROCS="}, filepath.Join(dir, "agent.log"))
	waitDial(b, agentSock)

	bareSock := filepath.Join(dir, "bare.sock")
	bareTCP := fmt.Sprintf("127.0.0.1:%d", agenttest.FreePort(b))
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	startProcess(b, self, []string{"-test.run", "^$"}, []string{bareServerEnv + "=" + bareSock + "," + bareTCP, "GOMAXPROCS="}, filepath.Join(dir, "bare.log"))
	waitDial(b, bareSock)
	bare1Sock := filepath.Join(dir, "bare1.sock")
	bare1TCP := fmt.Sprintf("127.0.0.1:%d", agenttest.FreePort(b))
	startProcess(b, self, []string{"-test.run", "^$"}, []string{bareServerEnv + "=" + bare1Sock + "," + bare1TCP, "GOMAXPROCS=1"}, filepath.Join(dir, "bare1.log"))
	waitDial(b, bare1Sock)

	figs := &pingFigures{p50: map[string]float64{}, qps: map[string]float64{}}
	for _, s := range []struct{ name, network, addr string }{
		{"agent/unix", "unix", agentSock},
		{"bare/unix", "unix", bareSock},
		{"bare-1proc/unix", "unix", bare1Sock},
		{"agent/tcp", "tcp", agentTCP},
		{"bare/tcp", "tcp", bareTCP},
	} {
		b.Run(s.name+"/raw/seq", func(b *testing.B) {
			p := mustDialRaw(b, s.network, s.addr)
			seqPings(b, p, figs, s.name)
		})
		b.Run(s.name+"/raw/8conns", func(b *testing.B) {
			clients := make([]pinger, concurrency)
			for i := range clients {
				clients[i] = mustDialRaw(b, s.network, s.addr)
			}
			concurrentPings(b, clients, figs, s.name)
		})
		b.Run(s.name+"/go/seq", func(b *testing.B) {
			seqPings(b, newHTTPPinger(s.network, s.addr, "/v1/ping"), figs, s.name+"/go")
		})
		b.Run(s.name+"/go/8clients", func(b *testing.B) {
			p := newHTTPPinger(s.network, s.addr, "/v1/ping")
			concurrentPings(b, slices.Repeat([]pinger{p}, concurrency), figs, s.name+"/go")
		})
	}
	if qga := startQGA(b, dir); qga != nil {
		b.Run("qemu-ga/unix/raw/seq", func(b *testing.B) { seqPings(b, qga, figs, "qemu-ga/unix") })
		b.Run("qemu-ga/unix/raw/8clients", func(b *testing.B) {
			concurrentPings(b, slices.Repeat([]pinger{qga}, concurrency), figs, "qemu-ga/unix")
		})
	}
	b.Run("ratios", func(b *testing.B) {
		// Not timed: the figures of the sub-benchmarks above, agent/peer.
		ratio := func(m map[string]float64, a, peer, unit string) {
			if m[a] > 0 && m[peer] > 0 {
				b.ReportMetric(m[a]/m[peer], unit)
			}
		}
		ratio(figs.p50, "agent/unix", "bare/unix", "p50-agent/bare")
		ratio(figs.p50, "agent/unix", "qemu-ga/unix", "p50-agent/qemu-ga")
		ratio(figs.p50, "agent/unix", "bare-1proc/unix", "p50-agent/bare-1proc")
		ratio(figs.qps, "agent/unix", "bare/unix", "8conns-agent/bare")
		ratio(figs.qps, "agent/unix", "bare-1proc/unix", "8conns-agent/bare-1proc")
		ratio(figs.qps, "agent/unix", "qemu-ga/unix", "8conns-agent/qemu-ga")
		ratio(figs.p50, "agent/unix/go", "bare/unix/go", "go-p50-agent/bare")
		ratio(figs.p50, "agent/unix/go", "qemu-ga/unix", "go-p50-agent/qemu-ga")
		ratio(figs.qps, "agent/unix/go", "bare/unix/go", "go-8clients-agent/bare")
	})
}

func mustDialRaw(b *testing.B, network, addr string) rawPinger {
	c, err := rawhttp.Dial(network, addr, rawhttp.Get("/v1/ping"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return rawPinger{c}
}

// bareServerEnv makes the test binary a bare net/http server instead (see
// TestMain): "unix-socket,tcp-address".
const bareServerEnv = "ARCBOX_BENCH_BARE_SERVER"

// serveBare answers GET /v1/ping as the agent does, with nothing around
// the handler: the peer BenchmarkPing measures the agent's router,
// middleware and logging against. It serves until it is killed.
func serveBare(addrs string) error {
	unixPath, tcpAddr, _ := strings.Cut(addrs, ",")
	body := `{"message":"pong","version":"` + agenttest.Version + `"}` + "\n"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	})}
	tcp, err := net.Listen("tcp", tcpAddr)
	if err != nil {
		return err
	}
	unix, err := net.Listen("unix", unixPath)
	if err != nil {
		return err
	}
	go func() { _ = srv.Serve(tcp) }()
	return srv.Serve(unix)
}

// startProcess runs bin with args (and env added) until the benchmark
// ends, its output to logFile; then it is stopped with SIGTERM. Should the
// benchmark die first (its -timeout), the process goes with it.
func startProcess(b *testing.B, bin string, args, env []string, logFile string) *exec.Cmd {
	b.Helper()
	log, err := os.Create(logFile)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		log.Close()
	})
	return cmd
}

func startQGA(b *testing.B, dir string) *qgaPinger {
	bin := testenv.RequireBinary(b, "qemu-ga")
	sock := filepath.Join(dir, "qga.sock")
	cmd := exec.Command(bin, "-m", "unix-listen", "-p", sock, "-t", dir, "-f", filepath.Join(dir, "qga.pid"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			b.Cleanup(func() { c.Close() })
			return &qgaPinger{c: c, r: bufio.NewReader(c)}
		}
		if time.Now().After(deadline) {
			b.Fatalf("qemu-ga never listened: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// minStarts is the fewest agent starts BenchmarkStartup takes its p50
// from, whatever b.N.
const minStarts = 20

// footprintPings is how many pings BenchmarkStartup sends one agent
// before it reads its resident memory again.
const footprintPings = 10_000

// BenchmarkStartup execs the agent binary, at its default log level, at
// least minStarts times, and reports the p50 and p90 of how soon after
// exec its first listener was bound, the startup metric (the smallest
// listen_control_* phase end), and what that figure is made of; the p50
// of the time until a client could connect and until its first request
// was answered; the first agent's resident memory once it is idle (VmRSS;
// its RssAnon, the heap and stacks without the binary's pages), and after
// footprintPings pings from concurrency raw clients.
//
// The metric counts from the process's start as /proc/self/stat gives it,
// in clock ticks of 10 ms, rounded down: it overstates by up to a tick,
// never understates. So that a figure near the target can be told apart
// from that rounding, the benchmark also reports the bind measured from
// just before exec (the agent's bind time on the wall clock, less the
// benchmark's own before cmd.Start), the rounding (the metric less that),
// and the two parts no rounding touches once split at main: go_init, the
// Go runtime's and the packages' initialisation (its end holds the
// rounding, so it is given from just before exec too), and main to the
// bind.
func BenchmarkStartup(b *testing.B) {
	bin := agenttest.Binary(b)
	var listen, fromExec, rounding, goInit, mainToListen, dial, answer []time.Duration
	var idle, loaded, settled procMemory
	start := func(first bool) {
		dir := b.TempDir()
		sock := agenttest.Socket(dir)
		log, err := os.Create(filepath.Join(dir, "agent.log"))
		if err != nil {
			b.Fatal(err)
		}
		defer log.Close()
		cmd := exec.Command(bin, agenttest.Flags(dir, "--set-clock=false")...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stdout, cmd.Stderr = log, log
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				b.Errorf("agent exit: %v", err)
			}
		}()
		for {
			c, err := net.Dial("unix", sock)
			if err == nil {
				c.Close()
				break
			}
			if time.Since(t0) > 60*time.Second {
				b.Fatal("agent never listened")
			}
			time.Sleep(50 * time.Microsecond)
		}
		dial = append(dial, time.Since(t0))
		m := readStartup(b, sock)
		answer = append(answer, time.Since(t0))
		bound := m.started.Add(m.listen)
		listen = append(listen, m.listen)
		fromExec = append(fromExec, bound.Sub(t0))
		rounding = append(rounding, m.listen-bound.Sub(t0))
		goInit = append(goInit, m.started.Add(m.goInit).Sub(t0))
		mainToListen = append(mainToListen, m.listen-m.goInit)
		if !first {
			return
		}
		b.StopTimer()
		defer b.StartTimer()
		time.Sleep(time.Second) // the sandbox manager's start, in the background, done
		idle = readMemory(b, cmd.Process.Pid)
		clients := make([]pinger, concurrency)
		for i := range clients {
			c, err := rawhttp.Dial("unix", sock, rawhttp.Get("/v1/ping"))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			clients[i] = rawPinger{c}
		}
		var wg sync.WaitGroup
		for _, p := range clients {
			wg.Go(func() {
				for range footprintPings / concurrency {
					if err := p.ping(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		loaded = readMemory(b, cmd.Process.Pid)
		time.Sleep(settleAfterLoad) // the agent gives back what the burst left once quiet
		settled = readMemory(b, cmd.Process.Pid)
	}
	for i := 0; b.Loop(); i++ {
		start(i == 0)
	}
	b.StopTimer()
	for len(listen) < minStarts {
		start(false)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	p50 := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	p90 := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)*9/10] }
	b.ReportMetric(float64(len(listen)), "starts")
	b.ReportMetric(ms(p50(listen)), "p50-ms-to-listen(metric)")
	b.ReportMetric(ms(p90(listen)), "p90-ms-to-listen(metric)")
	b.ReportMetric(ms(p50(fromExec)), "p50-ms-to-listen(from-exec)")
	b.ReportMetric(ms(p50(rounding)), "p50-ms-tick-rounding")
	b.ReportMetric(ms(p50(goInit)), "p50-ms-go-init(from-exec)")
	b.ReportMetric(ms(p50(mainToListen)), "p50-ms-main-to-listen")
	b.ReportMetric(ms(p50(dial)), "p50-ms-to-dial")
	b.ReportMetric(ms(p50(answer)), "p50-ms-to-answer")
	b.ReportMetric(idle.rss.mib(), "idle-RSS-MiB")
	b.ReportMetric(idle.anon.mib(), "idle-RssAnon-MiB")
	b.ReportMetric(loaded.rss.mib(), "10k-pings-RSS-MiB")
	b.ReportMetric(loaded.anon.mib(), "10k-pings-RssAnon-MiB")
	b.ReportMetric(loaded.hwm.mib(), "10k-pings-VmHWM-MiB")
	b.ReportMetric(settled.rss.mib(), "10k-pings-settled-RSS-MiB")
	b.ReportMetric(settled.anon.mib(), "10k-pings-settled-RssAnon-MiB")
}

// settleAfterLoad is how long after a load the benchmarks read the
// agent's memory again: two of its quiet intervals (trimEvery), and a
// margin.
const settleAfterLoad = 2*trimEvery + 2*time.Second

// startupFigures are an agent's startup metrics.
type startupFigures struct {
	started time.Time     // arcbox_agent_start_time_seconds
	listen  time.Duration // the first control listener bound, after started
	goInit  time.Duration // the go_init phase's end, after started
}

// readStartup reads the agent's startup metrics: when it started, how long
// after that its first control listener was bound and its go_init phase
// ended. It is the agent's first request.
func readStartup(b *testing.B, sock string) startupFigures {
	p := newHTTPPinger("unix", sock, "/metrics")
	resp, err := p.client.Get(p.url)
	if err != nil {
		b.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		b.Fatal(err)
	}
	value := func(line string) float64 {
		_, v, _ := strings.Cut(line, " ")
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			b.Fatalf("metric %q: %v", line, err)
		}
		return f
	}
	seconds := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	m := startupFigures{listen: -1, goInit: -1}
	for line := range strings.Lines(string(body)) {
		switch {
		case strings.HasPrefix(line, "arcbox_agent_start_time_seconds "):
			sec := value(line)
			m.started = time.Unix(0, 0).Add(seconds(sec))
		case strings.HasPrefix(line, `arcbox_agent_startup_phase_end_seconds{phase="go_init"}`):
			m.goInit = seconds(value(line))
		case strings.HasPrefix(line, `arcbox_agent_startup_phase_end_seconds{phase="listen_control_`):
			if d := seconds(value(line)); m.listen < 0 || d < m.listen {
				m.listen = d
			}
		}
	}
	if m.started.IsZero() || m.listen < 0 || m.goInit < 0 {
		b.Fatalf("no start time, go_init or listen_control phase in the metrics:\n%s", body)
	}
	return m
}

// bytesKiB is a figure of /proc/<pid>/status, in KiB.
type bytesKiB int64

func (k bytesKiB) mib() float64 { return float64(k) / 1024 }

// procMemory is a process's resident memory.
type procMemory struct{ rss, hwm, anon bytesKiB }

func readMemory(b *testing.B, pid int) procMemory {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	var m procMemory
	fields := map[string]*bytesKiB{"VmRSS": &m.rss, "VmHWM": &m.hwm, "RssAnon": &m.anon}
	for line := range strings.Lines(string(data)) {
		key, val, _ := strings.Cut(line, ":")
		if dst, ok := fields[key]; ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("/proc/%d/status: %q: %v", pid, line, err)
			}
			*dst = bytesKiB(kb)
		}
	}
	return m
}
