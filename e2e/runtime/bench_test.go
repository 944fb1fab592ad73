package runtime

import (
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// BenchmarkBootToDockerReady is a VM's boot as the user waits for it: the
// agent process starts on a data volume that holds a btrfs but is not
// mounted (a reboot), and the first ensure returns with dockerd ready.
// One op is the agent's exec to that answer; ms-to-readyz/op is the part
// until the control API is ready. Stopping the agent and unmounting are
// not timed.
func BenchmarkBootToDockerReady(b *testing.B) {
	e := setup(b)
	a := e.agent
	var toReady, toDocker time.Duration
	boot := func() {
		began := time.Now()
		a.start(b)
		toReady += time.Since(began)
		if r := a.ensure(b, true); r.Status != "started" || !r.Ready {
			b.Fatalf("ensure: %+v\n%s", r, a.logTail())
		}
		toDocker += time.Since(began)
	}
	halt := func() {
		if _, err := a.terminate(b, 2*time.Minute); err != nil {
			b.Fatalf("the agent's exit after SIGTERM: %v", err)
		}
		if failed := agenttest.UnmountUnder(a.Dir); len(failed) > 0 {
			b.Fatalf("unmount: %v", failed)
		}
		if !agenttest.WaitFor(time.Minute, func() bool { return len(agenttest.LoopsBacking(a.image)) == 0 }) {
			b.Fatalf("%v still attached to %s", agenttest.LoopsBacking(a.image), a.image)
		}
	}
	boot() // formats the volume
	halt()
	toReady, toDocker = 0, 0
	for b.Loop() {
		boot()
		b.StopTimer()
		halt()
		b.StartTimer()
	}
	b.ReportMetric(float64(toReady.Microseconds())/1000/float64(b.N), "ms-to-readyz/op")
	b.ReportMetric(float64(toDocker.Microseconds())/1000/float64(b.N), "ms-to-docker/op")
}
