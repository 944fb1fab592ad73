package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// The stress test: tens of clients churn sandboxes (create, ready, a run
// that writes known bytes to stdout and stderr at once, force-remove) on a
// machine whose every core is taken by a busy loop, for about a minute.
// Not one byte may be lost, and once the churn is over the agent must
// hold what it held before it.
const (
	stressLoops    = 24               // concurrent clients
	stressDuration = 50 * time.Second // of churn; the test takes about 20 s more
	stressPrefix   = "stress-"
	// The agent is stopped for stutterPause every stutterEvery during the
	// churn (see stutter).
	stutterEvery = time.Second
	stutterPause = 300 * time.Millisecond
	// Every slowEvery-th client reads its runs' output at slowRate bytes a
	// second, as a host on a slow link would: the agent is then still
	// sending when the command exits, and must send the rest all the same.
	slowEvery = 4
	slowRate  = 256 << 10
	// settleTimeout bounds the wait for the agent's teardown after the
	// churn, which is asynchronous: only a leak exhausts it.
	settleTimeout = 60 * time.Second
)

// stressSizes are the payloads' sizes: around the pipe's and the agent's
// read sizes, a few bytes to a few hundred KiB.
var stressSizes = []int{1, 100, 4 << 10, 4<<10 + 1, 64 << 10, 64<<10 + 3, 100_000, 200_000, 256 << 10, 300_000}

// TestStressChurn: 24 clients loop create, wait for ready, run
// `cat /data/pK & cat /data/pK >&2; wait; exit N` (pK a pseudo-random
// payload of the test's, bind-mounted read-only), force-remove, for about
// a minute, with a busy loop on every core, against an agent with
// GOMAXPROCS=1 that is stopped 300 ms every second; a quarter of the
// clients read the runs' output slowly. Every run's stdout and stderr are
// the payload, byte for byte, its exit code is N, and its exit message
// reports nothing truncated (the command leaves nothing behind).
// Afterwards the agent's goroutines, fds, mounts, loop devices, sandbox
// cgroups and zombies come back to where they were after a warm-up round,
// and its threads near it (the Go runtime keeps idle threads). The
// figures (runs, bytes, latencies, resources) are logged.
func TestStressChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("the stress test takes about a minute of load; skipped with -short")
	}
	t.Parallel() // with the other tests: they must hold on a loaded machine too
	// One P, as in a guest of one vCPU: the agent's goroutines wait
	// their turn, so an agent that times its reads loses output here.
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "stress"), Env: []string{"GOMAXPROCS=1"}}})
	payloads := writeStressPayloads(t)
	testenv.CPUHogs(t, runtime.NumCPU())

	a.Transport().CloseIdleConnections()
	idle, err := a.resources(stressPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("idle agent: %s", idle)

	// A warm-up round: one cycle per client, so that what the agent makes
	// once (pools, caches, the runtime's threads) is in the baseline.
	warm := a.churn(t, payloads, "w", 0)
	warm.failed(t)
	a.Transport().CloseIdleConnections()
	// The baseline: the warm-up's sandboxes all gone, and the goroutine
	// count the same three reads in a row (the last connections close).
	var last []int
	base, ok := a.waitResources(t, stressPrefix, settleTimeout, func(r agentResources) bool {
		last = append(last, r.Goroutines)
		n := len(last)
		return r.Mounts <= idle.Mounts && r.Cgroups == 0 && r.Zombies == 0 && r.Loops <= idle.Loops &&
			n >= 3 && last[n-1] == last[n-2] && last[n-2] == last[n-3]
	})
	if !ok {
		t.Fatalf("after the warm-up round the agent still holds %s; idle it held %s", base, idle)
	}
	t.Logf("baseline after the warm-up (%d runs): %s", warm.runs, base)

	stopStutter := a.stutter(t)
	st := a.churn(t, payloads, "c", stressDuration)
	stopStutter()
	st.report(t)
	st.failed(t) // the resources are checked all the same

	a.Transport().CloseIdleConnections()
	// Threads: the Go runtime keeps the threads it made for blocking
	// calls; past the warm-up's count, a few more are its own business,
	// many more are work that was never bounded.
	threadSlack := max(8, base.Threads/4)
	after, ok := a.waitResources(t, stressPrefix, settleTimeout, func(r agentResources) bool {
		return r.Goroutines <= base.Goroutines && r.FDs <= base.FDs && r.Threads <= base.Threads+threadSlack &&
			r.Mounts <= base.Mounts && r.Loops <= base.Loops && r.Cgroups == 0 && r.Zombies == 0
	})
	t.Logf("after the churn: %s", after)
	if !ok {
		t.Errorf("%s after the churn, not back to the baseline (%s, threads up to %d more) within %s",
			after, base, threadSlack, settleTimeout)
		if z := zombieChildren(a.PID()); len(z) > 0 {
			t.Errorf("zombie children of the agent: %v", z)
		}
	}
	if rss, peak, err := a.memory(); err == nil {
		t.Logf("agent memory: RSS %.1f MiB now, peak %.1f MiB", float64(rss)/(1<<20), float64(peak)/(1<<20))
	}
}

// stutter stops the agent (SIGSTOP) for stutterPause every stutterEvery
// until the returned function is called, as a host that does not run the
// guest's vCPU for a while: wall time passes, and every timer the agent
// armed has fired when it runs again.
func (a *agentProc) stutter(t *testing.T) (stop func()) {
	t.Helper()
	pid := a.PID()
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			case <-time.After(stutterEvery - stutterPause): // the cadence of the stalls
			}
			if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
				return // the agent is gone; the test says why
			}
			time.Sleep(stutterPause) // the stall itself
			if err := unix.Kill(pid, unix.SIGCONT); err != nil {
				return
			}
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(done)
			<-ended
			_ = unix.Kill(pid, unix.SIGCONT)
		})
	}
	t.Cleanup(stop)
	return stop
}

// stressPayloads are the runs' outputs: files in a directory that every
// sandbox of the churn mounts at /data.
type stressPayloads struct {
	dir  string
	data [][]byte // file "p<k>" holds data[k]
}

func writeStressPayloads(t *testing.T) stressPayloads {
	t.Helper()
	p := stressPayloads{dir: mountDir(t)}
	rng := rand.NewChaCha8([32]byte{'s', 't', 'r', 'e', 's', 's'})
	for k, n := range stressSizes {
		b := make([]byte, n)
		_, _ = io.ReadFull(rng, b)
		if err := os.WriteFile(filepath.Join(p.dir, "p"+strconv.Itoa(k)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		p.data = append(p.data, b)
	}
	return p
}

// churnStats is what a churn did and measured.
type churnStats struct {
	mu                          sync.Mutex
	create, ready, run, remove  []time.Duration
	runs, retries               int
	bytes                       int64
	errs                        []string
	stdoutErrs, stderrErrs, cut int
}

func (st *churnStats) add(what *[]time.Duration, d time.Duration) {
	st.mu.Lock()
	*what = append(*what, d)
	st.mu.Unlock()
}

func (st *churnStats) fail(format string, args ...any) {
	st.mu.Lock()
	st.errs = append(st.errs, fmt.Sprintf(format, args...))
	st.mu.Unlock()
}

// failed reports the churn's errors (the first 20 of them) to t.
func (st *churnStats) failed(t testing.TB) {
	t.Helper()
	for i, e := range st.errs {
		if i == 20 {
			t.Errorf("... and %d more", len(st.errs)-20)
			break
		}
		t.Error(e)
	}
}

func (st *churnStats) report(t *testing.T) {
	t.Helper()
	line := func(name string, ds []time.Duration) string {
		p50, p99 := percentiles(ds)
		return fmt.Sprintf("%s p50 %s p99 %s (%d)", name, p50.Round(time.Millisecond), p99.Round(time.Millisecond), len(ds))
	}
	t.Logf("churn: %d clients, %d runs, %d bytes of stdout and stderr checked, %d retries after 429",
		stressLoops, st.runs, st.bytes, st.retries)
	t.Logf("churn latencies: %s; %s; %s; %s", line("create", st.create), line("ready", st.ready), line("run", st.run), line("delete", st.remove))
	if st.stdoutErrs+st.stderrErrs+st.cut > 0 {
		t.Logf("runs with stdout lost or wrong: %d, stderr: %d, exit message reporting truncation: %d", st.stdoutErrs, st.stderrErrs, st.cut)
	}
}

// churn runs stressLoops clients, each looping create, ready, run,
// remove: once each when d is 0, else until d has passed (a cycle begun
// is finished). tag tells the rounds' sandbox ids apart.
func (a *agentProc) churn(t *testing.T, p stressPayloads, tag string, d time.Duration) *churnStats {
	t.Helper()
	w := a.followReady(t)
	defer w.close()
	st := &churnStats{}
	end := time.Now().Add(d)
	// Only a hang ends this: every cycle begun before end is finished.
	ctx, cancel := context.WithTimeout(context.Background(), d+3*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for loop := range stressLoops {
		wg.Go(func() {
			for i := 0; ; i++ {
				n := loop + i
				k := n % len(p.data)
				job := runJob{
					mounts: &[]api.Mount{{Source: p.dir, Target: "/data", Readonly: agenttest.Ptr(true)}},
					script: fmt.Sprintf("cat /data/p%d & cat /data/p%d >&2; wait; exit %d", k, k, n%4),
					want:   p.data[k],
					code:   n % 4,
					slow:   loop%slowEvery == slowEvery-1,
				}
				if err := a.cycle(ctx, t, w, st, fmt.Sprintf("%s%s%02d-%d", stressPrefix, tag, loop, i), job); err != nil {
					st.fail("client %d, cycle %d: %v", loop, i, err)
					return
				}
				if !time.Now().Before(end) {
					return
				}
			}
		})
	}
	wg.Wait()
	return st
}

// runJob is what a cycle runs: script in a sandbox with mounts, which
// must write want to both stdout and stderr and exit with code; slow reads
// its output slowly.
type runJob struct {
	mounts *[]api.Mount
	script string
	want   []byte
	code   int
	slow   bool
}

// cycle is one client's create, ready, run and remove of sandbox id.
func (a *agentProc) cycle(ctx context.Context, t testing.TB, w *readyWaiter, st *churnStats, id string, job runJob) error {
	c := a.plainClient(t)
	runClient := a.plainSDK(t, nil)
	if job.slow {
		runClient = a.plainSDK(t, slowTransport{a.Transport(), slowRate})
	}
	ready := w.expect(id)
	start := time.Now()
	req := api.CreateSandboxRequest{Id: agenttest.Ptr(id), Mounts: job.mounts}
	err := retryBusy(ctx, st, func() (*http.Response, []byte, error) {
		r, err := c.CreateSandboxWithResponse(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		return r.HTTPResponse, r.Body, nil
	}, http.StatusAccepted)
	if err != nil {
		w.forget(id)
		return fmt.Errorf("create %s: %w", id, err)
	}
	st.add(&st.create, time.Since(start))
	if err := w.wait(ctx, id, ready); err != nil {
		return err
	}
	st.add(&st.ready, time.Since(start))

	start = time.Now()
	res := runOver(ctx, t, runClient, id, api.RunRequest{Cmd: []string{"sh", "-c", job.script}}, nil)
	st.add(&st.run, time.Since(start))
	var errs []string
	switch {
	case res.Status != http.StatusOK:
		errs = append(errs, fmt.Sprintf("answered %d %q", res.Status, res.Message))
	case res.Cut:
		errs = append(errs, "the stream ended without an exit message")
	default:
		if res.Code != job.code {
			errs = append(errs, fmt.Sprintf("exit %d, want %d", res.Code, job.code))
		}
		if !bytes.Equal(res.Stdout, job.want) {
			st.mu.Lock()
			st.stdoutErrs++
			st.mu.Unlock()
			errs = append(errs, fmt.Sprintf("stdout: %d bytes, want %d (%s)", len(res.Stdout), len(job.want), firstDiff(res.Stdout, job.want)))
		}
		if !bytes.Equal(res.Stderr, job.want) {
			st.mu.Lock()
			st.stderrErrs++
			st.mu.Unlock()
			errs = append(errs, fmt.Sprintf("stderr: %d bytes, want %d (%s)", len(res.Stderr), len(job.want), firstDiff(res.Stderr, job.want)))
		}
		if res.Truncated {
			st.mu.Lock()
			st.cut++
			st.mu.Unlock()
			errs = append(errs, fmt.Sprintf("the exit message says output was truncated (%q) for a command that leaves nothing behind", res.Note))
		}
	}
	st.mu.Lock()
	st.runs++
	st.bytes += int64(len(res.Stdout) + len(res.Stderr))
	st.mu.Unlock()

	start = time.Now()
	force := true
	err = retryBusy(ctx, st, func() (*http.Response, []byte, error) {
		r, err := c.RemoveSandboxWithResponse(ctx, id, &api.RemoveSandboxParams{Force: &force})
		if err != nil {
			return nil, nil, err
		}
		return r.HTTPResponse, r.Body, nil
	}, http.StatusNoContent)
	if err != nil {
		errs = append(errs, fmt.Sprintf("remove: %v", err))
	} else {
		st.add(&st.remove, time.Since(start))
	}
	if len(errs) > 0 {
		how := ""
		if job.slow {
			how = ", read slowly,"
		}
		return fmt.Errorf("run %q%s in %s: %s", job.script, how, id, strings.Join(errs, "; "))
	}
	return nil
}

// slowTransport is a client on a slow link: it reads each response's body
// at rate bytes a second, 8 KiB at a time.
type slowTransport struct {
	base http.RoundTripper
	rate int
}

func (s slowTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.base.RoundTrip(req)
	if err == nil {
		resp.Body = &slowBody{ReadCloser: resp.Body, rate: s.rate}
	}
	return resp, err
}

type slowBody struct {
	io.ReadCloser
	rate int
}

func (b *slowBody) Read(p []byte) (int, error) {
	p = p[:min(len(p), 8<<10)]
	n, err := b.ReadCloser.Read(p)
	time.Sleep(time.Duration(n) * time.Second / time.Duration(b.rate)) // the link's pace
	return n, err
}

// retryBusy sends a request until it is not refused as busy (429, or 503
// with Retry-After), waiting the Retry-After it was told, and requires
// status want.
func retryBusy(ctx context.Context, st *churnStats, send func() (*http.Response, []byte, error), want int) error {
	for {
		resp, body, err := send()
		if err != nil {
			return err
		}
		after := resp.Header.Get("Retry-After")
		busy := resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable && after != ""
		if !busy {
			if resp.StatusCode != want {
				return fmt.Errorf("%d %s, want %d", resp.StatusCode, bytes.TrimSpace(body), want)
			}
			return nil
		}
		secs, err := strconv.Atoi(after)
		if err != nil || secs < 0 {
			return fmt.Errorf("%d with Retry-After %q, want a number of seconds: %s", resp.StatusCode, after, body)
		}
		st.mu.Lock()
		st.retries++
		st.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(max(secs, 1)) * time.Second): // as the server asked
		}
	}
}

// firstDiff says where got first differs from want.
func firstDiff(got, want []byte) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d", i)
		}
	}
	if len(got) < len(want) {
		return fmt.Sprintf("the last %d bytes missing", len(want)-len(got))
	}
	return fmt.Sprintf("%d bytes too many", len(got)-len(want))
}

// readyWaiter follows the event stream and hands each sandbox waited for
// its ready (or failed) event: one subscription for the whole churn.
type readyWaiter struct {
	mu      sync.Mutex
	waiting map[string]chan api.Event
	ended   chan struct{} // the stream ended
	cancel  context.CancelFunc
	events  atomic.Int64
}

func (a *agentProc) followReady(t testing.TB) *readyWaiter {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &readyWaiter{waiting: map[string]chan api.Event{}, ended: make(chan struct{}), cancel: cancel}
	answered, failed := make(chan struct{}), make(chan error, 1)
	go func() {
		defer close(w.ended)
		o := client.EventsOptions{
			OnConnect:   func() { close(answered) },
			OnReconnect: func(error) { cancel() }, // one connection only
		}
		for ev, err := range a.plainSDK(t, nil).Events(ctx, o) {
			if err != nil {
				failed <- err
				return
			}
			w.events.Add(1)
			if ev.Action != "ready" && ev.Action != "failed" {
				continue
			}
			w.mu.Lock()
			ch := w.waiting[ev.SandboxId]
			delete(w.waiting, ev.SandboxId)
			w.mu.Unlock()
			if ch != nil {
				ch <- ev // room for one
			}
		}
	}()
	select {
	case <-answered:
	case err := <-failed:
		cancel()
		t.Fatalf("GET /v1/events: %v", err)
	}
	return w
}

// expect registers a wait for id's ready event, before its create.
func (w *readyWaiter) expect(id string) chan api.Event {
	ch := make(chan api.Event, 1)
	w.mu.Lock()
	w.waiting[id] = ch
	w.mu.Unlock()
	return ch
}

func (w *readyWaiter) forget(id string) {
	w.mu.Lock()
	delete(w.waiting, id)
	w.mu.Unlock()
}

// wait waits for the event expect registered.
func (w *readyWaiter) wait(ctx context.Context, id string, ch chan api.Event) error {
	select {
	case ev := <-ch:
		if ev.Action != "ready" {
			return fmt.Errorf("sandbox %s %s: %v", id, ev.Action, attrs(ev))
		}
		return nil
	case <-w.ended:
		return fmt.Errorf("sandbox %s: the event stream ended (after %d events) before its ready event", id, w.events.Load())
	case <-ctx.Done():
		return fmt.Errorf("sandbox %s: no ready event: %w", id, ctx.Err())
	}
}

// close ends the subscription and waits for its reader.
func (w *readyWaiter) close() {
	w.cancel()
	<-w.ended
}
