package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/arcbox/arcbox-agent/api"
)

// EventsOptions says which events Events yields and how it reconnects.
type EventsOptions struct {
	// ID and Action, when set, keep only that sandbox's events and only
	// events with that action.
	ID     string
	Action api.EventAction
	// After, when set, first replays the events the agent still keeps
	// with a seq above it (0: all of them), then follows. Unset, the
	// stream is live from the moment of the request, and a reconnect
	// before the first event is live again: events in between are
	// missed. Set it to be sure to miss nothing.
	After *int64
	// WebSocket subscribes over a WebSocket instead of NDJSON.
	WebSocket bool
	// MinBackoff and MaxBackoff bound the wait before a reconnect: it
	// starts at MinBackoff (0: 100 ms) and doubles after each failed try
	// up to MaxBackoff (0: 5 s). It only delays: which events are
	// yielded is decided by seq alone.
	MinBackoff, MaxBackoff time.Duration
	// OnConnect, when set, is called each time a connection is
	// answered, before its first event: the subscription is in place,
	// so nothing the caller does from then on is missed.
	OnConnect func()
	// OnReconnect, when set, is called with why a connection ended
	// before each try to reconnect.
	OnReconnect func(err error)
}

// GoneError is the answer to a subscription whose After is older than
// the oldest event the agent keeps (410): events were lost. Subscribing
// again with After = Oldest-1 accepts the gap.
type GoneError struct {
	Err    *Error
	Oldest int64 // the oldest seq the agent still keeps
}

func (e *GoneError) Error() string {
	return fmt.Sprintf("%v (the oldest event kept is seq %d)", e.Err, e.Oldest)
}

func (e *GoneError) Unwrap() error { return e.Err }

// Events yields the agent's lifecycle events (GET /v1/events). When the
// connection drops (the agent restarts, the VM pauses, the subscriber
// fell too far behind), it reconnects with after = the seq of the last
// event it yielded, so no event is lost or yielded twice. It ends when
// ctx ends (yielding ctx's error), when the loop breaks, or with an
// answer that reconnecting cannot change: an *Error for a 4xx (a
// *GoneError for a 410).
func (c *Client) Events(ctx context.Context, o EventsOptions) iter.Seq2[api.Event, error] {
	return func(yield func(api.Event, error) bool) {
		var after *int64
		if o.After != nil {
			after = new(int64)
			*after = *o.After
		}
		b := newBackoff(o.MinBackoff, o.MaxBackoff)
		for {
			yielded, dropped, why := c.subscribe(ctx, o, &after, yield)
			if why == nil { // the loop broke
				return
			}
			if ctx.Err() != nil {
				yield(api.Event{}, ctx.Err())
				return
			}
			var e *Error
			if !dropped && errors.As(why, &e) && e.Code < 500 {
				yield(api.Event{}, why)
				return
			}
			if yielded {
				b.reset() // it was up: a new outage starts afresh
			}
			if o.OnReconnect != nil {
				o.OnReconnect(why)
			}
			if !b.sleep(ctx) {
				yield(api.Event{}, ctx.Err())
				return
			}
		}
	}
}

// backoff is the wait before a stream's reconnect: it starts at min and
// doubles after each failed try up to max.
type backoff struct{ wait, min, max time.Duration }

// newBackoff bounds the waits by minWait (0: 100 ms) and maxWait (0, or
// below minWait: 5 s or minWait).
func newBackoff(minWait, maxWait time.Duration) *backoff {
	if minWait <= 0 {
		minWait = 100 * time.Millisecond
	}
	if maxWait < minWait {
		maxWait = max(5*time.Second, minWait)
	}
	return &backoff{wait: minWait, min: minWait, max: maxWait}
}

func (b *backoff) reset() { b.wait = b.min }

// sleep waits before the next try; false when ctx ended first.
func (b *backoff) sleep(ctx context.Context) bool {
	t := time.NewTimer(b.wait)
	defer t.Stop()
	b.wait = min(2*b.wait, b.max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// subscribe makes one connection and yields its events, moving *after
// along. It returns a nil error when the iteration is over, else why the
// connection ended: dropped when it was answered (then yielded says
// whether any event came), else the refusal.
func (c *Client) subscribe(ctx context.Context, o EventsOptions, after **int64, yield func(api.Event, error) bool) (yielded, dropped bool, err error) {
	q := url.Values{}
	if o.ID != "" {
		q.Set("id", o.ID)
	}
	if o.Action != "" {
		q.Set("action", string(o.Action))
	}
	if *after != nil {
		q.Set("after", strconv.FormatInt(**after, 10))
	}
	next, closeConn, err := c.openMessages(ctx, "/v1/events", q, o.WebSocket, "event")
	if err != nil {
		return false, false, gone(err)
	}
	defer closeConn()
	if o.OnConnect != nil {
		o.OnConnect()
	}
	for {
		raw, err := next()
		if err != nil {
			return yielded, true, fmt.Errorf("the event stream ended: %w", err)
		}
		c.see("Event", raw)
		ev, seq, err := decodeEvent(raw)
		if err != nil {
			// The agent broke the contract: reconnecting would not help.
			yield(api.Event{}, err)
			return yielded, false, nil
		}
		if *after != nil && seq <= **after {
			continue // seen before the reconnect
		}
		*after = &seq
		yielded = true
		if !yield(ev, nil) {
			return true, false, nil
		}
	}
}

// gone makes a 410's *Error a *GoneError, read from the
// X-Event-Oldest-Seq header that errorFrom kept.
func gone(err error) error {
	var e *Error
	if !errors.As(err, &e) || e.Code != http.StatusGone {
		return err
	}
	g := &GoneError{Err: e}
	if e.header != nil {
		g.Oldest, _ = strconv.ParseInt(e.header.Get("X-Event-Oldest-Seq"), 10, 64)
	}
	return g
}

// decodeEvent decodes an Event, once, and its seq: an event without one
// (0) breaks the contract, since every event the journal serves has one.
func decodeEvent(raw []byte) (api.Event, int64, error) {
	var ev api.Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return ev, 0, fmt.Errorf("event message: %w: %.200s", err, raw)
	}
	if ev.Seq < 1 {
		return ev, 0, fmt.Errorf("event message: seq is not a positive integer: %.200s", raw)
	}
	return ev, ev.Seq, nil
}
