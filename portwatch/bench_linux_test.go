package portwatch

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"golang.org/x/sys/unix"
)

// stamped is an event with the time its callback ran.
type stamped struct {
	event
	at time.Time
}

// runBenchWatcher runs a watcher of dir with Recheck recheck until the
// benchmark ends and returns its events, stamped.
func runBenchWatcher(b *testing.B, dir string, recheck time.Duration) (*Watcher, chan stamped) {
	b.Helper()
	ch := make(chan stamped, 1024)
	w := New(Config{
		NetnsDir: dir,
		Recheck:  recheck,
		OnOpen:   func(l Listener) { ch <- stamped{event{true, l}, time.Now()} },
		OnClose:  func(l Listener) { ch <- stamped{event{false, l}, time.Now()} },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	})
	return w, ch
}

// awaitStamped reads events until want and returns when its callback ran.
func awaitStamped(b *testing.B, ch chan stamped, want event) time.Time {
	b.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case got := <-ch:
			if got.event == want {
				return got.at
			}
		case <-deadline:
			b.Fatalf("no %v in %v", want, waitFor)
		}
	}
}

// awaitAll reads events until it has seen each of want, in any order.
func awaitAll(b *testing.B, ch chan stamped, want []event) {
	b.Helper()
	missing := map[event]bool{}
	for _, e := range want {
		missing[e] = true
	}
	deadline := time.After(waitFor)
	for len(missing) > 0 {
		select {
		case got := <-ch:
			delete(missing, got.event)
		case <-deadline:
			b.Fatalf("in %v, no %v", waitFor, missing)
		}
	}
}

// BenchmarkOpenLatency measures, over b.N listeners opened one after the
// other, the time from just before listen(2) (or bind(2), for UDP) to the
// OnOpen call that reports it, in the guest and in a sandbox's namespace,
// at the default Interval. Each trial waits a random part of an Interval
// before it listens, so listens fall anywhere between two scans, as they
// do in life (a trial that began on the scan that saw the last one close
// would always wait a whole Interval). Run it with -benchtime=200x for
// steady percentiles; ns/op is a trial's whole cycle, open and close.
func BenchmarkOpenLatency(b *testing.B) {
	testenv.RequireIsolated(b)
	for _, tc := range []struct{ name, sandbox, network string }{
		{"guest/tcp", "", "tcp4"},
		{"guest/udp", "", "udp4"},
		{"sandbox/tcp", "sb", "tcp4"},
		{"sandbox/udp", "sb", "udp4"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dir := b.TempDir()
			run := func(f func()) { f() }
			if tc.sandbox != "" {
				ns := newTestNetns(b)
				ns.bind(b, filepath.Join(dir, tc.sandbox))
				run = ns.run
			}
			_, ch := runBenchWatcher(b, dir, 0)
			took := make([]time.Duration, 0, b.N)
			for b.Loop() {
				time.Sleep(rand.N(DefaultInterval))
				var (
					t0   time.Time
					port uint16
					c    interface{ Close() error }
					err  error
				)
				run(func() {
					t0 = time.Now()
					if tc.network == "tcp4" {
						var l net.Listener
						if l, err = net.Listen(tc.network, "127.0.0.1:0"); err == nil {
							port, c = tcpPort(l), l
						}
						return
					}
					var u net.PacketConn
					if u, err = net.ListenPacket(tc.network, "127.0.0.1:0"); err == nil {
						port, c = udpPort(u), u
					}
				})
				if err != nil {
					b.Fatal(err)
				}
				proto := TCP
				if tc.network == "udp4" {
					proto = UDP
				}
				l := Listener{Protocol: proto, Address: lo4, Port: port, Sandbox: tc.sandbox}
				took = append(took, awaitStamped(b, ch, opened(l)).Sub(t0))
				c.Close()
				awaitStamped(b, ch, closed(l))
			}
			reportLatency(b, took)
		})
	}
}

// reportLatency reports the median, 99th percentile and worst of took, in
// milliseconds.
func reportLatency(b *testing.B, took []time.Duration) {
	if len(took) == 0 {
		return
	}
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(took[len(took)/2]), "p50-ms")
	b.ReportMetric(ms(took[min(len(took)-1, len(took)*99/100)]), "p99-ms")
	b.ReportMetric(ms(took[len(took)-1]), "max-ms")
}

// BenchmarkIdleCPU measures what the watcher costs while nothing changes:
// the process's CPU time (getrusage RUSAGE_SELF: every thread, so the
// kernel's work for the dumps is in it) while the benchmark sleeps one
// Interval per b.N, with the guest and 0, 10 and 50 sandbox namespaces,
// each sandbox with a TCP and a UDP listener, at the default Interval. Run
// it with -benchtime=10s for a 10 s window per case. "off" is the same
// process with no watcher: the floor, its own sleeps' wake-ups. "nogate"
// dumps every namespace every scan (Recheck < 0), where the default reads
// the counters and dumps each namespace once a Recheck. "udpchild" makes
// the sandboxes with UDP tables of their own (net.ipv4.
// udp_child_hash_entries=128, set in the benchmark's own namespace), so a
// sandbox's UDP dumps walk 128 buckets instead of the guest's table.
// Metrics: %core, CPU time over wall time in percent of one core;
// us/scan, CPU time per Interval.
func BenchmarkIdleCPU(b *testing.B) {
	testenv.RequireIsolated(b)
	for _, tc := range []struct {
		name      string
		sandboxes int
		watch     bool
		recheck   time.Duration
		udpChild  bool
	}{
		{"off", 0, false, 0, false},
		{"sandboxes=0", 0, true, 0, false},
		{"sandboxes=0/nogate", 0, true, -1, false},
		{"sandboxes=10", 10, true, 0, false},
		{"sandboxes=10/nogate", 10, true, -1, false},
		{"sandboxes=50", 50, true, 0, false},
		{"sandboxes=50/nogate", 50, true, -1, false},
		{"sandboxes=50/udpchild", 50, true, 0, true},
		{"sandboxes=50/udpchild/nogate", 50, true, -1, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.udpChild {
				setUDPChildHash(b, 128)
			}
			dir := b.TempDir()
			var want []event
			for i := range tc.sandboxes {
				want = append(want, idleSandbox(b, dir, fmt.Sprintf("sb-%02d", i))...)
			}
			if tc.watch {
				_, ch := runBenchWatcher(b, dir, tc.recheck)
				awaitAll(b, ch, want)
			}
			runtime.GC()
			debug.FreeOSMemory() // so that the runtime returning memory is not counted
			c0, t0 := processCPU(b), time.Now()
			for b.Loop() {
				time.Sleep(DefaultInterval)
			}
			cpu, wall := processCPU(b)-c0, time.Since(t0)
			b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "%core")
			b.ReportMetric(float64(cpu.Microseconds())/(wall.Seconds()/DefaultInterval.Seconds()), "us/scan")
		})
	}
}

// idleSandbox makes sandbox id's namespace in dir with a TCP and a UDP
// listener in it, and returns the events that report them.
func idleSandbox(b *testing.B, dir, id string) []event {
	ns := newTestNetns(b)
	ns.bind(b, filepath.Join(dir, id))
	var (
		l   net.Listener
		u   net.PacketConn
		err error
	)
	ns.run(func() {
		if l, err = net.Listen("tcp4", "127.0.0.1:0"); err == nil {
			u, err = net.ListenPacket("udp4", "127.0.0.1:0")
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close(); u.Close() })
	return []event{
		opened(Listener{Protocol: TCP, Address: lo4, Port: tcpPort(l), Sandbox: id}),
		opened(Listener{Protocol: UDP, Address: lo4, Port: udpPort(u), Sandbox: id}),
	}
}

// processCPU is the CPU time, user and system, of every thread of the
// process so far.
func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// setUDPChildHash sets net.ipv4.udp_child_hash_entries in the calling
// thread's network namespace (the benchmark's own, made by RunIsolated)
// until the benchmark ends: namespaces made meanwhile get a UDP table of
// their own of that size.
func setUDPChildHash(b *testing.B, n int) {
	b.Helper()
	const p = "/proc/sys/net/ipv4/udp_child_hash_entries"
	old, err := os.ReadFile(p)
	if err != nil {
		b.Skipf("kernel without per-namespace UDP tables: %v", err)
	}
	if err := os.WriteFile(p, fmt.Appendf(nil, "%d", n), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := os.WriteFile(p, old, 0o644); err != nil {
			b.Errorf("restore %s: %v", p, err)
		}
	})
}
