package handlers_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/events"
)

// BenchmarkEventsFanOut publishes events at 10,000 a second to 100 NDJSON
// subscribers, each over its own loopback connection through the handler,
// and reports how long an event took from Append to each subscriber's read
// (p50, p99, max), how many were lost (a loss fails it) and the rate the
// events were published at. Each event is appended at its deadline,
// start + i/10,000 s, rather than on a ticker's tick: a ticker drops the
// ticks a busy machine misses, and the rate would fall short unsaid. Run
// it for the 10 s with -benchtime 100000x (make bench gives it
// 2 s):
//
//	go test -run '^$' -bench EventsFanOut -benchtime 100000x ./handlers/
func BenchmarkEventsFanOut(b *testing.B) {
	const subscribers, perSecond = 100, 10_000
	j, err := events.Open(events.Config{Dir: b.TempDir(), Size: events.DefaultSize})
	if err != nil {
		b.Fatal(err)
	}
	url := serveEvents(b, j)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	lat := make([][]time.Duration, subscribers)
	var ready, done sync.WaitGroup
	errs := make(chan error, subscribers)
	for i := range subscribers {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/events", nil)
			resp, err := http.DefaultClient.Do(req)
			ready.Done()
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			var want uint64 = 1
			for sc.Scan() {
				got := time.Now()
				seq, ts, ok := seqAndTime(sc.Bytes())
				if !ok {
					errs <- fmt.Errorf("subscriber %d: a line without seq or timestamp: %q", i, sc.Bytes())
					return
				}
				if seq != want {
					b.Errorf("subscriber %d: seq %d, want %d: an event was lost or doubled", i, seq, want)
					return
				}
				want++
				lat[i] = append(lat[i], got.Sub(time.Unix(0, ts)))
				if seq == uint64(b.N) {
					return
				}
			}
		}()
	}
	// Do returns with the status line, and the subscription is made
	// before it: none of them can miss the first event.
	ready.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if d := time.Until(start.Add(time.Duration(i) * time.Second / perSecond)); d > 0 {
			time.Sleep(d)
		}
		j.Append(events.Event{SandboxID: "bench", Action: "ready"}) // stamped now
	}
	published := time.Since(start)
	done.Wait()
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	lost := subscribers*b.N - len(all)
	b.ReportMetric(float64(lost), "lost")
	b.ReportMetric(float64(b.N)/published.Seconds(), "events/s")
	if lost != 0 {
		b.Fatalf("%d deliveries of %d lost", lost, subscribers*b.N)
	}
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(all[len(all)-1].Microseconds()), "max-µs")
}

// seqAndTime reads an event line's seq and timestamp without decoding it
// all: 100 subscribers decoding a million lines a second would measure
// the benchmark, not the agent.
func seqAndTime(line []byte) (seq uint64, ts int64, ok bool) {
	num := func(key string) (int64, bool) {
		i := bytes.Index(line, []byte(key))
		if i < 0 {
			return 0, false
		}
		rest := line[i+len(key):]
		end := bytes.IndexAny(rest, ",}")
		if end < 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(string(rest[:end]), 10, 64)
		return n, err == nil
	}
	s, ok1 := num(`"seq":`)
	t, ok2 := num(`"timestamp":`)
	return uint64(s), t, ok1 && ok2
}
