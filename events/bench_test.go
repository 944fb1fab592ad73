package events

import (
	"context"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkAppend measures one Append with no subscriber, on a disk journal
// (one write(2) per event, a reservation fsync every 4096) and a
// memory-only one. p50-ns and p99-ns are of single calls.
func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		name string
		dir  func() string
	}{
		{"disk", b.TempDir},
		{"memory", func() string { return "" }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			j, err := Open(Config{Dir: tc.dir()})
			if err != nil {
				b.Fatal(err)
			}
			defer j.Close()
			e := Event{SandboxID: "sandbox-0123", Action: "idle", Attributes: map[string]string{"exit_code": "0"}}
			took := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				j.Append(e)
				took = append(took, time.Since(t0))
			}
			b.StopTimer()
			reportPercentiles(b, took, "")
		})
	}
}

// BenchmarkFanout publishes b.N events at 10,000 a second to a journal
// (on disk, and memory-only) with 100 live subscribers, and reports the delivery latency
// (from the event's time, taken in Append, to Next's return) and events
// lost, which must be 0. Run it for 10 s with -benchtime=100000x.
func BenchmarkFanout(b *testing.B) {
	b.Run("disk", func(b *testing.B) { fanout(b, b.TempDir()) })
	b.Run("memory", func(b *testing.B) { fanout(b, "") })
}

func fanout(b *testing.B, dir string) {
	const subscribers, perSecond = 100, 10000
	j, err := Open(Config{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	latencies := make([][]time.Duration, subscribers)
	lost := make([]int, subscribers)
	var wg sync.WaitGroup
	for k := range subscribers {
		s, err := j.Subscribe(Live(), Filter{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		lat := make([]time.Duration, 0, b.N)
		wg.Go(func() {
			var want uint64 = 1
			for range b.N {
				e, _, err := s.Next(context.Background())
				if err != nil {
					b.Errorf("subscriber %d: %v", k, err)
					lost[k] += b.N - len(lat)
					break
				}
				lat = append(lat, time.Since(e.Time))
				if e.Seq != want {
					lost[k] += int(e.Seq - want)
				}
				want = e.Seq + 1
			}
			latencies[k] = lat
		})
	}
	e := Event{SandboxID: "sandbox-0123", Action: "idle", Attributes: map[string]string{"exit_code": "0"}}
	appendTook := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if d := time.Until(start.Add(time.Duration(i) * time.Second / perSecond)); d > 0 {
			time.Sleep(d)
		}
		t0 := time.Now()
		j.Append(e)
		appendTook = append(appendTook, time.Since(t0))
	}
	published := time.Since(start)
	wg.Wait()
	b.StopTimer()
	var all []time.Duration
	totalLost := 0
	for k := range subscribers {
		all = append(all, latencies[k]...)
		totalLost += lost[k]
	}
	reportPercentiles(b, all, "delivery-")
	reportPercentiles(b, appendTook, "append-")
	b.ReportMetric(float64(totalLost), "lost")
	b.ReportMetric(float64(b.N)/published.Seconds(), "events/s")
	if totalLost != 0 {
		b.Fatalf("%d events lost", totalLost)
	}
}

func reportPercentiles(b *testing.B, d []time.Duration, prefix string) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	at := func(p float64) float64 {
		return float64(d[int(math.Ceil(p*float64(len(d))))-1].Nanoseconds())
	}
	b.ReportMetric(at(0.50), prefix+"p50-ns")
	b.ReportMetric(at(0.99), prefix+"p99-ns")
	b.ReportMetric(at(1), prefix+"max-ns")
}

// BenchmarkReserve measures one durable reservation (temporary file,
// fsync, rename, fsync of the directory): what an fsync per Append would
// cost at least, and what the journal pays once every 4096 events.
func BenchmarkReserve(b *testing.B) {
	s := &store{dir: b.TempDir()}
	for i := range b.N {
		if err := s.reserve(uint64(i + 1)); err != nil {
			b.Fatal(err)
		}
	}
}
