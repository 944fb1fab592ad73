package events

import (
	"context"
	"sort"
	"sync"
)

// From says where a subscription starts.
type From struct {
	after  uint64
	replay bool
}

// Live starts a subscription at the moment Subscribe returns: nothing is
// replayed, and nothing appended after Subscribe returns is missed.
func Live() From { return From{} }

// After starts a subscription with every kept event whose seq is above
// seq, then follows live. After(0) replays everything kept.
func After(seq uint64) From { return From{after: seq, replay: true} }

// Subscription is a stream of events in seq order. Next is not safe for
// concurrent use; Close may be called from any goroutine.
type Subscription struct {
	j       *Journal
	filter  Filter
	next    uint64 // the number (counting from Open) of the next event to look at
	lastSeq uint64 // the seq of the last event looked at, matching or not
	err     error  // sticky: the subscription has ended
	done    chan struct{}
	once    sync.Once
}

// Subscribe starts a subscription to the events that pass f. From After,
// it fails with *FutureError when seq is past the newest seq assigned, and
// with *ExpiredError when events after seq are no longer kept. After Close
// it fails with ErrClosed.
func (j *Journal) Subscribe(from From, f Filter) (*Subscription, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.closed {
		return nil, ErrClosed
	}
	s := &Subscription{j: j, filter: f, next: j.total, lastSeq: j.last, done: make(chan struct{})}
	if from.replay {
		oldest := j.oldestLocked()
		switch {
		case from.after > j.last:
			return nil, &FutureError{After: from.after, Last: j.last}
		case from.after+1 < oldest:
			return nil, &ExpiredError{After: from.after, Oldest: oldest}
		}
		base := j.base()
		i := sort.Search(len(j.ring), func(i int) bool { return j.at(base+uint64(i)).ev.Seq > from.after })
		s.next, s.lastSeq = base+uint64(i), from.after
	}
	j.metrics.subscribers.Inc()
	return s, nil
}

// Next returns the next event that passes the filter, and its encoded line
// (the wire JSON and a newline, shared with every subscriber: read-only). It
// waits for one until ctx ends (ctx.Err()), the subscription or the journal
// is closed (ErrClosed), or the subscription fell more than the journal's
// size behind (*FellBehindError). Once it returns an error other than
// ctx's, every later call returns the same.
func (s *Subscription) Next(ctx context.Context) (Event, []byte, error) {
	if s.err != nil {
		return Event{}, nil, s.err
	}
	select {
	case <-s.done:
		return s.fail(ErrClosed)
	default:
	}
	j := s.j
	for {
		j.mu.RLock()
		if j.closed {
			j.mu.RUnlock()
			return s.fail(ErrClosed)
		}
		if base := j.base(); s.next < base {
			err := &FellBehindError{Next: s.lastSeq + 1, Oldest: j.at(base).ev.Seq}
			j.mu.RUnlock()
			j.metrics.fellBehind.Inc()
			return s.fail(err)
		}
		for s.next < j.total {
			en := j.at(s.next)
			s.next++
			s.lastSeq = en.ev.Seq
			if s.filter.Match(&en.ev) {
				ev, line := en.ev, en.line
				j.mu.RUnlock()
				return ev, line, nil
			}
		}
		j.waiting.Store(true)
		wake := j.wake
		j.mu.RUnlock()

		select {
		case <-wake:
		case <-s.done:
			return s.fail(ErrClosed)
		case <-ctx.Done():
			return Event{}, nil, ctx.Err()
		}
	}
}

// Pending reports whether Next has an event that passes the filter ready,
// so it will not wait: a sender batches its writes while it does, and
// flushes when it does not. It skips the events the filter refuses.
func (s *Subscription) Pending() bool {
	if s.err != nil {
		return false
	}
	j := s.j
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.closed || s.next < j.base() {
		return false // Next says why at once
	}
	for ; s.next < j.total; s.next++ {
		en := j.at(s.next)
		if s.filter.Match(&en.ev) {
			return true
		}
		s.lastSeq = en.ev.Seq
	}
	return false
}

func (s *Subscription) fail(err error) (Event, []byte, error) {
	s.err = err
	return Event{}, nil, err
}

// Close ends the subscription: a waiting Next returns ErrClosed. It may be
// called more than once.
func (s *Subscription) Close() {
	s.once.Do(func() {
		close(s.done)
		s.j.metrics.subscribers.Dec()
	})
}
