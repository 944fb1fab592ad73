package sandbox

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
)

// footprintPings and footprintRuns are the load BenchmarkFootprint puts on
// the agent before it reads its memory again: the figures.
const (
	footprintPings = 10_000
	footprintRuns  = 100
)

// settleAfterLoad is how long after a load the memory is read again: the
// agent gives back what a burst left once it has been quiet for one of
// its 5 s intervals after a busy one; two of them and a margin.
const settleAfterLoad = 12 * time.Second

// BenchmarkFootprint reports an agent's resident memory, on an agent of
// its own so the figures are its alone: idle (its sandbox backend up),
// after footprintPings pings (the benchmark's op, topped up to that many)
// over one kept-alive connection, and after footprintRuns runs of `true`
// in one sandbox. Each is VmRSS and its anonymous part (RssAnon: heap,
// stacks, without the binary's pages), in MiB; VmHWM is the peak, at the
// end.
func BenchmarkFootprint(b *testing.B) {
	a := ownAgent(b, newAgent(filepath.Join(suite.dir, "bench-footprint")))
	// Reported at the end: b.Loop's start clears what was reported.
	var figures []func()
	report := func(when string) {
		rss, _, err := a.memory()
		if err != nil {
			b.Fatal(err)
		}
		anon, err := a.anonMemory()
		if err != nil {
			b.Fatal(err)
		}
		figures = append(figures, func() {
			b.ReportMetric(float64(rss)/(1<<20), when+"-RSS-MiB")
			b.ReportMetric(float64(anon)/(1<<10), when+"-RssAnon-MiB")
		})
	}
	report("idle")

	hc := &http.Client{Transport: a.Transport()}
	ping := func() {
		resp, err := hc.Get("http://agent/v1/ping")
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("ping: %d %v", resp.StatusCode, err)
		}
	}
	pings := 0
	for b.Loop() {
		ping()
		pings++
	}
	for ; pings < footprintPings; pings++ {
		ping()
	}
	report(fmt.Sprintf("%dk-pings", footprintPings/1000))
	time.Sleep(settleAfterLoad)
	report(fmt.Sprintf("%dk-pings-settled", footprintPings/1000))

	const id = "bench-footprint"
	benchSandbox(b, a, id)
	c := a.plainSDK(b, nil)
	for range footprintRuns {
		if res := runOver(context.Background(), b, c, id, api.RunRequest{Cmd: []string{"true"}}, nil); res.Code != 0 || res.Cut {
			b.Fatalf("run true: %+v", res)
		}
	}
	report(fmt.Sprintf("%d-runs", footprintRuns))
	time.Sleep(settleAfterLoad)
	report(fmt.Sprintf("%d-runs-settled", footprintRuns))
	_, peak, err := a.memory()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range figures {
		f()
	}
	b.ReportMetric(float64(peak)/(1<<20), "VmHWM-MiB")
}
