package sandbox

import (
	"context"
	"sync"
)

// workQueue bounds a kind of heavy operation (a container start, a
// teardown, a checkpoint): at most `workers` run at once, at most `depth`
// more wait their turn, and past that the operation is refused with
// ErrBusy at once instead of piling up. Every start or removal runs the
// OCI runtime and touches mounts and cgroups; two hundred of them at
// once on two cores starve everything else the agent does (a ping took
// a second), and gain nothing, since the machine can only do a few of
// them at a time anyway.
type workQueue struct {
	what  string // for messages: "sandbox starts"
	slots chan struct{}
	stop  <-chan struct{} // closed: the agent is shutting down, no more turns

	mu    sync.Mutex
	depth int // how many may wait besides those running
	held  int // places held: running or waiting
}

func newWorkQueue(what string, workers, depth int, stop <-chan struct{}) *workQueue {
	return &workQueue{what: what, slots: make(chan struct{}, max(workers, 1)), depth: max(depth, 0), stop: stop}
}

// reserve takes a place in the queue, or says it is full (ErrBusy); the
// place is given back by the release of the turn it leads to, or by
// cancel when the operation is not going ahead after all.
func (q *workQueue) reserve() (*queuePlace, error) {
	return q.place(true)
}

// place takes a place, within the bound when bounded.
func (q *workQueue) place(bounded bool) (*queuePlace, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if bounded && q.held >= q.depth+cap(q.slots) {
		return nil, Errorf(ErrBusy, "too many %s in progress (%d at a time, and %d more waiting); try again shortly", q.what, cap(q.slots), q.depth)
	}
	q.held++
	return &queuePlace{q: q}, nil
}

// queuePlace is a place reserved in a workQueue.
type queuePlace struct {
	q    *workQueue
	once sync.Once
}

// wait waits for a turn; release gives it back. When ctx ends first the
// place is given up and the error is ctx's; when the agent shuts down
// first, errClosed.
func (p *queuePlace) wait(ctx context.Context) (release func(), err error) {
	select {
	case p.q.slots <- struct{}{}:
		return func() { <-p.q.slots; p.cancel() }, nil
	case <-ctx.Done():
		p.cancel()
		return nil, ctx.Err()
	case <-p.q.stop:
		p.cancel()
		return nil, errClosed
	}
}

// cancel gives the place up; it is safe to call more than once.
func (p *queuePlace) cancel() {
	p.once.Do(func() {
		p.q.mu.Lock()
		p.q.held--
		p.q.mu.Unlock()
	})
}

// run reserves a place and waits for its turn, for an operation whose
// caller waits for it.
func (q *workQueue) run(ctx context.Context) (release func(), err error) {
	p, err := q.reserve()
	if err != nil {
		return nil, err
	}
	return p.wait(ctx)
}

// turn waits for a turn without the depth bound, for work the agent gives
// itself (a TTL's removal) that must be done, only not all at once.
func (q *workQueue) turn(ctx context.Context) (release func(), err error) {
	p, _ := q.place(false)
	return p.wait(ctx)
}
