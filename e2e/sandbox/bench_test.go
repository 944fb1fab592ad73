package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
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

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// The benchmarks measure the agent's sandbox paths against their peers in
// the same run (go test -run '^$' -bench . ./e2e/sandbox/, or make bench):
//
//	BenchmarkCreateToReady  create until the ready event, with a user
//	                        namespace (the default) and without, against
//	                        a bare `<runtime> run -d` of the same bundles
//	                        and `docker run -d` of the same busybox
//	BenchmarkRunTrue        a `true` run's round trip (NDJSON, WebSocket),
//	                        against `<runtime> exec`, `docker exec` and
//	                        qemu-guest-agent's guest-exec with status polling
//	BenchmarkRunOutput      1 GiB of output over the WebSocket (its binary
//	                        channel subprotocol and its JSON messages) and
//	                        NDJSON, against `<runtime> exec` into a pipe
//	BenchmarkPingDuringForkBomb ping's latency while a fork bomb fills
//	                        a sandbox's pids limit
//	BenchmarkPingUnderChurn ping's latency while 50 clients churn
//	                        sandboxes; the churn's own latencies and the
//	                        agent's memory before, at peak and after
//
// <runtime> is the OCI runtime the agent picked (its "sandbox backend
// ready" log line names it). The clients here do not validate responses
// against openapi.yaml (the tests do): the figures are the agent's.

// plainClient is the generated client without contract checks.
func (a *agentProc) plainClient(b testing.TB) *api.ClientWithResponses {
	b.Helper()
	c, err := api.NewClientWithResponses("http://agent", api.WithHTTPClient(&http.Client{Transport: a.Transport()}))
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// benchSandbox creates a sandbox for a benchmark and removes it after.
func benchSandbox(b *testing.B, a *agentProc, id string) {
	b.Helper()
	c := a.plainClient(b)
	ready := a.readyEvents(b)
	if r, err := c.CreateSandboxWithResponse(context.Background(), api.CreateSandboxRequest{Id: agenttest.Ptr(id)}); err != nil || r.JSON202 == nil {
		b.Fatalf("create %s: %v %v", id, err, r)
	}
	ready.waitReady(b, id)
	b.Cleanup(func() { a.remove(b, id, true) })
}

// plainSDK is the SDK's client without contract checks, over rt (nil:
// the agent's transport), with opts.
func (a *agentProc) plainSDK(b testing.TB, rt http.RoundTripper, opts ...client.Option) *client.Client {
	b.Helper()
	if rt == nil {
		rt = a.Transport()
	}
	c, err := client.New("unix://"+a.Socket(), append(opts, client.WithHTTPClient(&http.Client{Transport: rt}))...)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// readyEvents subscribes to the events without contract checks; the
// subscription is in place when it returns.
func (a *agentProc) readyEvents(b testing.TB) *eventStream {
	b.Helper()
	return a.subscribe(b, a.plainSDK(b, nil), client.EventsOptions{})
}

// waitReady reads events until id's ready one.
func (s *eventStream) waitReady(b testing.TB, id string) {
	for {
		ev := s.next()
		if ev.SandboxId != id {
			continue
		}
		switch ev.Action {
		case "ready":
			return
		case "failed":
			b.Fatalf("%s failed: %v", id, attrs(ev))
		}
	}
}

// BenchmarkCreateToReady: POST /v1/sandboxes until the sandbox's ready
// event, with a user namespace (api) and without (api-no-userns: the
// namespace's cost, whose target is 10 ms at most), against `<runtime> run
// -d` of a bundle with the agent's own config.json for each, and `docker
// run -d` of a busybox image.
func BenchmarkCreateToReady(b *testing.B) {
	a := sharedAgent(b)
	b.Run("api", func(b *testing.B) { benchCreateToReady(b, a, "bench-ready", api.CreateSandboxRequest{}) })
	b.Run("api-no-userns", func(b *testing.B) {
		benchCreateToReady(b, a, "bench-ready-host-users", api.CreateSandboxRequest{Security: &api.SecuritySpec{UserNamespace: agenttest.Ptr(false)}})
	})
	for _, userns := range []bool{true, false} {
		name := "bare-" + filepath.Base(a.runtime)
		if !userns {
			name += "-no-userns"
		}
		b.Run(name, func(b *testing.B) {
			bb := newBareBundle(b, a, userns)
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("bench-bare-%d", i)
				bb.run(b, id)
				b.StopTimer()
				bb.remove(b, id)
				b.StartTimer()
			}
		})
	}
	b.Run("docker", func(b *testing.B) {
		d := dockerPeer(b)
		for i := 0; b.Loop(); i++ {
			name := fmt.Sprintf("bench-docker-%d", i)
			d.cli(b, "run", "-d", "--network", "none", "--name", name, dockerImage, "sleep", "1000000")
			b.StopTimer()
			d.cli(b, "rm", "-f", name)
			b.StartTimer()
		}
	})
}

// benchCreateToReady creates sandboxes like req until each is ready,
// removing each outside the timer.
func benchCreateToReady(b *testing.B, a *agentProc, prefix string, req api.CreateSandboxRequest) {
	c := a.plainClient(b)
	ready := a.readyEvents(b)
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		req.Id = &id
		if r, err := c.CreateSandboxWithResponse(context.Background(), req); err != nil || r.JSON202 == nil {
			b.Fatalf("create %s: %v %v", id, err, r)
		}
		ready.waitReady(b, id)
		b.StopTimer()
		a.remove(b, id, false)
		b.StartTimer()
	}
}

// BenchmarkPingDuringForkBomb: GET /v1/ping's round trip while a fork bomb
// fills a sandbox's pids limit (64) and keeps trying; it reports ping's
// p50 and p99 in milliseconds (the target: p99 under 50 ms).
func BenchmarkPingDuringForkBomb(b *testing.B) {
	a := sharedAgent(b)
	_, stop := a.lightForkBomb(b, "bench-fork-bomb", 64)
	c := a.plainClient(b)
	var pings []time.Duration
	for b.Loop() {
		start := time.Now()
		if r, err := c.GetPingWithResponse(context.Background()); err != nil || r.JSON200 == nil {
			b.Fatalf("ping: %v %v", err, r)
		}
		pings = append(pings, time.Since(start))
	}
	b.StopTimer()
	p50, p99 := percentiles(pings)
	b.ReportMetric(float64(p50)/float64(time.Millisecond), "ping-p50-ms")
	b.ReportMetric(float64(p99)/float64(time.Millisecond), "ping-p99-ms")
	stop()
	a.remove(b, "bench-fork-bomb", false)
}

// BenchmarkRunTrue: a `true` run's round trip, request to exit code, over
// NDJSON and the WebSocket, against `<runtime> exec` into the same
// sandbox, `docker exec` into a running container, and qemu-guest-agent's
// guest-exec polled with guest-exec-status until it exited.
func BenchmarkRunTrue(b *testing.B) {
	a := sharedAgent(b)
	const id = "bench-true"
	benchSandbox(b, a, id)
	b.Run("api-ndjson", func(b *testing.B) {
		c := a.plainSDK(b, nil)
		for b.Loop() {
			if res := runOver(context.Background(), b, c, id, api.RunRequest{Cmd: []string{"true"}}, nil); res.Code != 0 || res.Cut {
				b.Fatalf("run true: %+v", res)
			}
		}
	})
	b.Run("api-websocket", func(b *testing.B) {
		for b.Loop() {
			w, e := a.runWS(context.Background(), b, id, api.RunRequest{Cmd: []string{"true"}})
			if w == nil {
				b.Fatalf("WebSocket run: %s", refusal(e))
			}
			if res := w.finish(context.Background()); res.Code != 0 {
				b.Fatalf("run true: %+v", res)
			}
		}
	})
	b.Run("bare-"+filepath.Base(a.runtime)+"-exec", func(b *testing.B) {
		root := filepath.Join(a.stateDir, "runtime")
		for b.Loop() {
			if out, err := exec.Command(a.runtime, "--root", root, "exec", id, "true").CombinedOutput(); err != nil {
				b.Fatalf("%s exec: %v: %s", a.runtime, err, out)
			}
		}
	})
	b.Run("docker-exec", func(b *testing.B) {
		d := dockerPeer(b)
		name := d.container(b)
		for b.Loop() {
			d.cli(b, "exec", name, "true")
		}
	})
	b.Run("qemu-ga-exec", func(b *testing.B) {
		ga := qemuGAPeer(b)
		for b.Loop() {
			if code := ga.exec(b, "/bin/true"); code != 0 {
				b.Fatalf("guest-exec true: exit %d", code)
			}
		}
	})
}

// BenchmarkRunOutput: 1 GiB of zeros through a run (MB/s is the
// throughput), from `dd bs=1M` and busybox `head -c 1G /dev/zero` (4 KiB
// writes); over the WebSocket's binary channel subprotocol through the
// SDK (channels), its JSON messages through the SDK (websocket-sdk) and
// read here (websocket), and NDJSON, against `<runtime> exec` of the same
// command into a pipe the benchmark drains. The client decodes every
// message (the base64 costs it about a third more bytes; the channel
// subprotocol has none).
func BenchmarkRunOutput(b *testing.B) {
	const size = 1 << 30
	a := sharedAgent(b)
	const id = "bench-output"
	benchSandbox(b, a, id)
	writers := []struct {
		name string
		cmd  []string
	}{
		{"dd1M", []string{"dd", "if=/dev/zero", "bs=1048576", "count=1024", "status=none"}},
		{"head", []string{"head", "-c", "1073741824", "/dev/zero"}},
	}
	for _, w := range writers {
		for _, sdk := range []struct {
			name string
			opts []client.Option
		}{{"channels", nil}, {"websocket-sdk", []client.Option{client.WithJSONWebSockets()}}} {
			b.Run(w.name+"/"+sdk.name, func(b *testing.B) {
				b.SetBytes(size)
				c := a.plainSDK(b, nil, sdk.opts...)
				ctx := context.Background()
				var msgs int64
				for b.Loop() {
					var n int64
					res := collectRun(ctx, b, c.RunWS(ctx, id, api.RunRequest{Cmd: w.cmd}), http.StatusSwitchingProtocols, w.cmd,
						func(_ string, data []byte) { n += int64(len(data)) })
					if res.Code != 0 || res.Cut || n != size {
						b.Fatalf("%+v, %d bytes", res, n)
					}
					msgs += int64(res.Messages)
				}
				b.ReportMetric(float64(msgs)/float64(b.N), "msgs/op")
			})
		}
		for _, decode := range []bool{true, false} {
			name := w.name + "/websocket"
			if !decode {
				name += "-counted"
			}
			b.Run(name, func(b *testing.B) {
				b.SetBytes(size)
				var msgs int64
				for b.Loop() {
					n, m := wsOutput(b, a, id, w.cmd, decode)
					if n != size {
						b.Fatalf("%d bytes, want %d", n, size)
					}
					msgs += m
				}
				b.ReportMetric(float64(msgs)/float64(b.N), "msgs/op")
			})
		}
		b.Run(w.name+"/ndjson", func(b *testing.B) {
			b.SetBytes(size)
			c := a.plainSDK(b, nil)
			var msgs int64
			for b.Loop() {
				var n int64
				res := runOver(context.Background(), b, c, id, api.RunRequest{Cmd: w.cmd}, func(_ string, data []byte) { n += int64(len(data)) })
				if res.Code != 0 || res.Cut || n != size {
					b.Fatalf("%+v, %d bytes", res, n)
				}
				msgs += int64(res.Messages)
			}
			b.ReportMetric(float64(msgs)/float64(b.N), "msgs/op")
		})
		b.Run(w.name+"/bare-"+filepath.Base(a.runtime)+"-exec", func(b *testing.B) {
			b.SetBytes(size)
			root := filepath.Join(a.stateDir, "runtime")
			buf := make([]byte, 256<<10)
			for b.Loop() {
				cmd := exec.Command(a.runtime, append([]string{"--root", root, "exec", id}, w.cmd...)...)
				out, err := cmd.StdoutPipe()
				if err != nil {
					b.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				n, _ := io.CopyBuffer(io.Discard, out, buf)
				if err := cmd.Wait(); err != nil || n != size {
					b.Fatalf("%s exec: %v, %d bytes", a.runtime, err, n)
				}
			}
		})
	}
}

// Churn for BenchmarkPingUnderChurn: how many clients, how many cycles
// at least (the percentiles need them), and for how long at most.
const (
	churnClients   = 50
	churnMinCycles = 250
	churnMaxTime   = 2 * time.Minute
	// rssSettle is when the agent's memory is read after the churn.
	rssSettle = 30 * time.Second
)

// BenchmarkPingUnderChurn: GET /v1/ping's round trip (the op) while 50
// clients churn sandboxes on an agent of its own (create, ready, run
// `true`, force-remove; a client told 429 waits its Retry-After). Besides
// ns/op it reports ping's p50 and p99, the churn's create (request to
// 202), ready (request to the ready event), run and delete p50 and p99,
// in milliseconds, and the agent's resident memory in MiB: before, at its
// peak (VmHWM), and 30 s after the churn ended, and of that the anonymous
// part (heap, stacks) before and after.
func BenchmarkPingUnderChurn(b *testing.B) {
	a := ownAgent(b, newAgent(filepath.Join(suite.dir, "bench-churn")))
	rssBefore, _, err := a.memory()
	if err != nil {
		b.Fatal(err)
	}
	anonBefore, err := a.anonMemory()
	if err != nil {
		b.Fatal(err)
	}
	w := a.followReady(b)
	st := &churnStats{}
	ctx, cancel := context.WithTimeout(context.Background(), churnMaxTime+time.Minute)
	defer cancel()
	stop := make(chan struct{})
	var cycles atomic.Int64
	var wg sync.WaitGroup
	for client := range churnClients {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("churn-%02d-%d", client, i)
				if err := a.cycle(ctx, b, w, st, id, runJob{script: "true"}); err != nil {
					st.fail("client %d: %v", client, err)
					return
				}
				cycles.Add(1)
			}
		})
	}
	ending := func() { close(stop); wg.Wait(); w.close() }

	c := a.plainClient(b)
	var pings []time.Duration
	ping := func() {
		start := time.Now()
		r, err := c.GetPingWithResponse(ctx)
		if err != nil || r.JSON200 == nil {
			ending()
			b.Fatalf("ping: %v %v", err, r)
		}
		pings = append(pings, time.Since(start))
	}
	// The churn in its stride: a cycle per client done.
	started := time.Now()
	for cycles.Load() < churnClients && time.Since(started) < churnMaxTime {
		ping()
	}
	pings = pings[:0]
	b.ResetTimer()
	for b.Loop() {
		ping()
	}
	b.StopTimer()
	for cycles.Load() < churnMinCycles && time.Since(started) < churnMaxTime {
		ping() // more churn for its percentiles; ping is measured all along
	}
	ending()
	for _, e := range st.errs {
		b.Error(e)
	}
	_, peak, err := a.memory()
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(rssSettle) // the figure is the memory this long after the churn
	rssAfter, _, err := a.memory()
	if err != nil {
		b.Fatal(err)
	}
	anonAfter, err := a.anonMemory()
	if err != nil {
		b.Fatal(err)
	}
	threads, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", a.PID()))

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	report := func(name string, ds []time.Duration) {
		p50, p99 := percentiles(ds)
		b.ReportMetric(ms(p50), name+"-p50-ms")
		b.ReportMetric(ms(p99), name+"-p99-ms")
	}
	report("ping", pings)
	report("create", st.create)
	report("ready", st.ready)
	report("run", st.run)
	report("delete", st.remove)
	b.ReportMetric(float64(cycles.Load()), "churn-cycles")
	b.ReportMetric(float64(rssBefore)/(1<<20), "rss-before-MiB")
	b.ReportMetric(float64(peak)/(1<<20), "rss-peak-MiB")
	b.ReportMetric(float64(rssAfter)/(1<<20), "rss-after-30s-MiB")
	b.ReportMetric(float64(anonBefore)/(1<<10), "anon-before-MiB")
	b.ReportMetric(float64(anonAfter)/(1<<10), "anon-after-30s-MiB")
	b.ReportMetric(float64(len(threads)), "threads-after")
}

// wsOutput runs cmd over the WebSocket and returns how many bytes of
// stdout it received. Each message is read into a buffer reused for the
// next; with decode, its base64 is decoded too (as a host program must),
// else only counted, so the figure is the agent's and the transport's
// rather than the client's.
func wsOutput(b *testing.B, a *agentProc, id string, cmd []string, decode bool) (n, msgs int64) {
	ctx := context.Background()
	// The socket is read here, not through the SDK: the figure is the
	// agent's and the transport's.
	c, resp, err := a.dialWS(ctx, "/v1/sandboxes/"+id+"/run")
	if err != nil {
		b.Fatalf("WebSocket run: %v (%s)", err, statusOf(resp))
	}
	defer func() { _ = c.CloseNow() }()
	body, _ := json.Marshal(api.RunRequest{Cmd: cmd})
	if err := c.Write(ctx, websocket.MessageText, body); err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 0, 1<<20)
	var data []byte
	for {
		_, r, err := c.Reader(ctx)
		if err != nil {
			b.Fatalf("after %d bytes: %v", n, err)
		}
		msg = msg[:0]
		for {
			if len(msg) == cap(msg) {
				msg = append(msg, 0)[:len(msg)]
			}
			k, err := r.Read(msg[len(msg):cap(msg)])
			msg = msg[:len(msg)+k]
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatalf("after %d bytes: %v", n, err)
			}
		}
		if b64, ok := bytes.CutPrefix(msg, []byte(`{"stream":"stdout","data":"`)); ok {
			b64 = bytes.TrimSuffix(b64, []byte(`"}`))
			msgs++
			if decode {
				if data, err = base64.StdEncoding.AppendDecode(data[:0], b64); err != nil {
					b.Fatal(err)
				}
				n += int64(len(data))
			} else {
				n += int64(base64.StdEncoding.DecodedLen(len(b64)) - bytes.Count(b64[max(0, len(b64)-2):], []byte("=")))
			}
			continue
		}
		var m api.OutputMessage
		if err := json.Unmarshal(msg, &m); err != nil || m.Stream != "exit" || m.ExitCode == nil || *m.ExitCode != 0 {
			b.Fatalf("message %.200s (%v), want the exit message with 0", msg, err)
		}
		return n, msgs
	}
}

// bareBundle is a bundle with the agent's own config.json for a sandbox
// (taken from one it made), on that sandbox's root filesystem, for the
// bare runtime to run.
type bareBundle struct {
	runtime string
	root    string // the runtime's --root
	dir     string
}

// newBareBundle makes a bareBundle from a default sandbox's config.json;
// without userns, from one made with security.user_namespace false.
func newBareBundle(b *testing.B, a *agentProc, userns bool) *bareBundle {
	b.Helper()
	template, bare := "bench-template", "bare"
	if !userns {
		template, bare = "bench-template-host-users", "bare-host-users"
		a.create(b, api.CreateSandboxRequest{Id: agenttest.Ptr(template), Security: &api.SecuritySpec{UserNamespace: agenttest.Ptr(false)}})
		b.Cleanup(func() { a.remove(b, template, true) })
	} else {
		benchSandbox(b, a, template)
	}
	data, err := os.ReadFile(filepath.Join(a.stateDir, "sandboxes", template, "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(suite.dir, bare)
	bb := &bareBundle{runtime: a.runtime, root: filepath.Join(dir, "runtime"), dir: filepath.Join(dir, "bundle")}
	for _, d := range []string{bb.root, bb.dir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			b.Fatal(err)
		}
	}
	// The template's own root: its overlay, owned as the agent made it
	// for the sandbox's user namespace (idmapped or shifted).
	if !filepath.IsAbs(spec.Root.Path) {
		spec.Root.Path = filepath.Join(a.stateDir, "sandboxes", template, spec.Root.Path)
	}
	spec.Hostname = "bare"
	if spec.Linux == nil {
		b.Fatal("the agent's config.json has no linux section")
	}
	spec.Linux.CgroupsPath = filepath.Join(filepath.Dir(spec.Linux.CgroupsPath), "bench-"+bare)
	out, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bb.dir, "config.json"), out, 0o600); err != nil {
		b.Fatal(err)
	}
	return bb
}

// run is the measured part: `<runtime> run -d`.
func (bb *bareBundle) run(b *testing.B, id string) {
	logFile := filepath.Join(bb.dir, "runtime.log")
	cmd := exec.Command(bb.runtime, "--root", bb.root, "--log", logFile, "run", "-d", "--bundle", bb.dir, id)
	// Files, not pipes: the init inherits them, and Wait must not wait
	// for it to close a pipe.
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if err := cmd.Run(); err != nil {
		log, _ := os.ReadFile(logFile)
		b.Fatalf("%s run -d: %v: %s", bb.runtime, err, lastBytes(log, 2048))
	}
}

func (bb *bareBundle) remove(b *testing.B, id string) {
	if out, err := exec.Command(bb.runtime, "--root", bb.root, "delete", "-f", id).CombinedOutput(); err != nil {
		b.Fatalf("%s delete -f: %v: %s", bb.runtime, err, out)
	}
}

// ---- docker ----

// dockerImage is the busybox image the docker peer runs, loaded from the
// test's own image (the one the registry test serves).
const dockerImage = "arcbox-bench/busybox:1"

// dockerd is a dockerd the benchmarks start in this network namespace,
// with every path in the suite's directory: no bridge, no iptables, and
// images only from `docker load`.
type dockerd struct {
	sock string
	cmd  *exec.Cmd
	seq  int
}

var docker struct {
	d   *dockerd
	err error
}

// dockerPeer starts dockerd once, or skips the benchmark (docker is a peer
// to compare with, not something the agent needs) when it cannot.
func dockerPeer(b *testing.B) *dockerd {
	b.Helper()
	suite.sharedMu.Lock()
	defer suite.sharedMu.Unlock()
	if docker.d == nil && docker.err == nil {
		docker.d, docker.err = startDockerd(b)
	}
	if docker.err != nil {
		b.Skipf("no dockerd to compare with: %v", docker.err)
	}
	return docker.d
}

func startDockerd(b *testing.B) (*dockerd, error) {
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("docker"); err != nil {
		return nil, err
	}
	dir := filepath.Join(suite.dir, "dockerd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(conf, []byte("{}\n"), 0o600); err != nil {
		return nil, err
	}
	d := &dockerd{sock: filepath.Join(dir, "docker.sock")}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	d.cmd = exec.Command(bin, "--config-file", conf, "--host", "unix://"+d.sock,
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"), "--bridge", "none",
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
		"--userland-proxy=false", "--log-level", "warn")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(exited) }()
	stop := func() {
		_ = d.cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = d.cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.After(60 * time.Second)
	for exec.Command("docker", "--host", "unix://"+d.sock, "version").Run() != nil {
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			return nil, fmt.Errorf("dockerd exited: %s", lastBytes(log, 2048))
		case <-deadline:
			stop()
			return nil, fmt.Errorf("dockerd did not answer within 60s")
		case <-time.After(50 * time.Millisecond):
		}
	}
	atSuiteEnd(func() {
		if out, err := exec.Command("docker", "--host", "unix://"+d.sock, "ps", "-aq").Output(); err == nil {
			if ids := strings.Fields(string(out)); len(ids) > 0 {
				_ = exec.Command("docker", append([]string{"--host", "unix://" + d.sock, "rm", "-f"}, ids...)...).Run()
			}
		}
		stop()
	})
	tarPath := filepath.Join(dir, "busybox.tar")
	if err := writeImageTarball(b, dockerImage, tarPath); err != nil {
		return nil, err
	}
	if out, err := exec.Command("docker", "--host", "unix://"+d.sock, "load", "-i", tarPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("docker load: %w: %s", err, out)
	}
	return d, nil
}

// cli runs the docker CLI against the benchmark's dockerd.
func (d *dockerd) cli(b *testing.B, args ...string) {
	b.Helper()
	if out, err := exec.Command("docker", append([]string{"--host", "unix://" + d.sock}, args...)...).CombinedOutput(); err != nil {
		b.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// container starts a long-running container for the benchmark and removes
// it after.
func (d *dockerd) container(b *testing.B) string {
	b.Helper()
	d.seq++
	name := fmt.Sprintf("bench-exec-%d", d.seq)
	d.cli(b, "run", "-d", "--network", "none", "--name", name, dockerImage, "sleep", "1000000")
	b.Cleanup(func() { d.cli(b, "rm", "-f", name) })
	return name
}

// ---- qemu-guest-agent ----

// qemuGA is qemu-ga listening on a unix socket, as it would on the VM's
// virtio-serial port, with a client connection.
type qemuGA struct {
	conn io.ReadWriteCloser
	r    *bufio.Reader
}

var qga struct {
	ga  *qemuGA
	err error
}

// qemuGAPeer starts qemu-ga once, or skips the benchmark when it cannot.
func qemuGAPeer(b *testing.B) *qemuGA {
	b.Helper()
	suite.sharedMu.Lock()
	defer suite.sharedMu.Unlock()
	if qga.ga == nil && qga.err == nil {
		qga.ga, qga.err = startQemuGA()
	}
	if qga.err != nil {
		b.Skipf("no qemu-ga to compare with: %v", qga.err)
	}
	return qga.ga
}

func startQemuGA() (*qemuGA, error) {
	bin, err := exec.LookPath("qemu-ga")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(suite.dir, "qemu-ga")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "qga.sock")
	logf, err := os.Create(filepath.Join(dir, "qemu-ga.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--method", "unix-listen", "--path", sock,
		"--pidfile", filepath.Join(dir, "qemu-ga.pid"), "--statedir", dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	atSuiteEnd(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.After(10 * time.Second)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			ga := &qemuGA{conn: conn, r: bufio.NewReader(conn)}
			atSuiteEnd(func() { conn.Close() })
			return ga, nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "qemu-ga.log"))
			return nil, fmt.Errorf("qemu-ga exited: %s", lastBytes(log, 2048))
		case <-deadline:
			return nil, fmt.Errorf("qemu-ga did not listen within 10s: %w", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// call sends one QMP-style command and decodes its return value.
func (ga *qemuGA) call(b *testing.B, command string, args, ret any) {
	b.Helper()
	req, err := json.Marshal(map[string]any{"execute": command, "arguments": args})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := ga.conn.Write(append(req, '\n')); err != nil {
		b.Fatalf("qemu-ga %s: %v", command, err)
	}
	line, err := ga.r.ReadBytes('\n')
	if err != nil {
		b.Fatalf("qemu-ga %s: %v", command, err)
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &resp); err != nil || resp.Error != nil {
		b.Fatalf("qemu-ga %s: %s (%v)", command, bytes.TrimSpace(line), err)
	}
	if err := json.Unmarshal(resp.Return, ret); err != nil {
		b.Fatalf("qemu-ga %s: %s: %v", command, resp.Return, err)
	}
}

// exec runs path with guest-exec and polls guest-exec-status (no pause
// between polls, its fastest) until it exited; it returns the exit code.
func (ga *qemuGA) exec(b *testing.B, path string) int {
	b.Helper()
	var started struct {
		Pid int `json:"pid"`
	}
	ga.call(b, "guest-exec", map[string]any{"path": path, "capture-output": true}, &started)
	for {
		var st struct {
			Exited   bool `json:"exited"`
			ExitCode int  `json:"exitcode"`
		}
		ga.call(b, "guest-exec-status", map[string]any{"pid": started.Pid}, &st)
		if st.Exited {
			return st.ExitCode
		}
	}
}

// ---- small helpers ----

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// writeImageTarball writes the test's busybox image as a `docker load`
// tarball tagged tag.
func writeImageTarball(b *testing.B, tag, path string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, ref, busyboxImage(b, "docker"))
}
