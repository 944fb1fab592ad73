package sandbox

import (
	"sync"
)

// DefaultEventBuffer is how many events a subscriber may leave unread
// before it is cut off.
const DefaultEventBuffer = 1024

// bus delivers events to subscribers. Publishing never blocks: a subscriber
// whose buffer is full is cut off (its channel closed, Err set), so a slow
// one never holds up the manager or the others.
type bus struct {
	size    int
	dropped func() // counts a subscriber cut off

	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed error // set once the bus is closed: why
}

func newBus(size int, dropped func()) *bus {
	if size <= 0 {
		size = DefaultEventBuffer
	}
	return &bus{size: size, dropped: dropped, subs: map[*Subscription]struct{}{}}
}

// Subscription is a stream of events. Read C until it closes, then Err says
// why it ended; Close ends it early.
type Subscription struct {
	bus    *bus
	filter EventFilter
	c      chan Event
	err    error // guarded by bus.mu
}

// C delivers the events in the order they happened. It is closed when the
// subscription ends.
func (s *Subscription) C() <-chan Event { return s.c }

// Err says why C was closed: ErrSlowSubscriber when the subscriber fell
// behind (its buffer filled), ErrManagerClosed at shutdown, nil after Close
// or while the subscription is open.
func (s *Subscription) Err() error {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	return s.err
}

// Close ends the subscription and closes C. It may be called more than once.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.bus.end(s, nil)
}

func (f EventFilter) match(e Event) bool {
	return (f.SandboxID == "" || f.SandboxID == e.SandboxID) && (f.Action == "" || f.Action == e.Action)
}

func (b *bus) subscribe(f EventFilter) *Subscription {
	s := &Subscription{bus: b, filter: f, c: make(chan Event, b.size)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed != nil {
		s.err = b.closed
		close(s.c)
		return s
	}
	b.subs[s] = struct{}{}
	return s
}

// end removes a subscriber and closes its channel; b.mu is held.
func (b *bus) end(s *Subscription, why error) {
	if _, ok := b.subs[s]; !ok {
		return
	}
	delete(b.subs, s)
	s.err = why
	close(s.c)
}

// publish hands e to every matching subscriber without blocking. The
// attributes map is shared: subscribers must not modify it.
func (b *bus) publish(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		if !s.filter.match(e) {
			continue
		}
		select {
		case s.c <- e:
		default:
			b.end(s, ErrSlowSubscriber)
			if b.dropped != nil {
				b.dropped()
			}
		}
	}
}

// close ends every subscription with why, and every later one at once.
func (b *bus) close(why error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = why
	for s := range b.subs {
		b.end(s, why)
	}
}
