package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/events"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// EventJournal is the part of the event journal the API serves.
type EventJournal interface {
	Subscribe(from events.From, f events.Filter) (*events.Subscription, error)
}

var _ EventJournal = (*events.Journal)(nil)

// OldestSeqHeader carries, on a 410, the oldest seq the journal still keeps.
const OldestSeqHeader = "X-Event-Oldest-Seq"

// lastEventIDHeader is the SSE resume header; it wins over ?after= because
// an EventSource reconnects to its first URL with the header set.
const lastEventIDHeader = "Last-Event-ID"

// How an event stream is framed, by content negotiation.
type eventFraming int

const (
	framingNDJSON eventFraming = iota
	framingSSE
	framingWebSocket
)

// StreamEvents serves the event journal: it replays the events after
// ?after= (or Last-Event-ID) and then follows, as NDJSON, Server-Sent
// Events or a WebSocket. Without a seq it is live only. The subscription
// is made before the response begins, so nothing after the status line is
// missed.
func (a *API) StreamEvents(w http.ResponseWriter, r *http.Request, params api.StreamEventsParams) {
	f := events.Filter{SandboxID: deref(params.Id)}
	if params.Id != nil {
		if err := idRule.check(`query parameter "id"`, f.SandboxID); err != nil {
			httpapi.WriteErr(w, err)
			return
		}
	}
	if params.Action != nil {
		if !params.Action.Valid() {
			httpapi.WriteErr(w, badRequest(`query parameter "action": %s is not an event action`, quoteShort(string(*params.Action))))
			return
		}
		f.Action = string(*params.Action)
	}
	from, what, msg := eventsFrom(r)
	if msg != "" {
		httpapi.WriteError(w, http.StatusBadRequest, msg)
		return
	}
	framing, ok := negotiateEvents(r)
	if !ok {
		httpapi.WriteError(w, http.StatusNotAcceptable, fmt.Sprintf(
			`header "Accept": %s takes none of what this stream is served as: application/x-ndjson, text/event-stream, or a WebSocket (Upgrade: websocket)`,
			quoteShort(strings.Join(r.Header.Values("Accept"), ", "))))
		return
	}
	if a.cfg.Events == nil {
		httpapi.WriteError(w, http.StatusServiceUnavailable, "the event journal is unavailable: not configured")
		return
	}
	j, err := a.cfg.Events(r.Context())
	if err != nil {
		httpapi.WriteError(w, http.StatusServiceUnavailable, "the event journal is unavailable: "+err.Error())
		return
	}
	sub, err := j.Subscribe(from, f)
	if err != nil {
		writeSubscribeErr(w, what, err)
		return
	}
	defer sub.Close()
	ctx, cancel := a.streamContext(r)
	defer cancel()

	if framing == framingWebSocket {
		c := httpapi.AcceptWebSocket(w, r)
		if c == nil {
			return
		}
		defer func() { _ = c.CloseNow() }()
		ctx = c.CloseRead(ctx)
		err := forwardEvents(ctx, sub, func(_ events.Event, line []byte, _ bool) error {
			return c.Write(ctx, websocket.MessageText, line[:len(line)-1])
		})
		var behind *events.FellBehindError
		switch {
		case errors.As(err, &behind):
			closeWith(c, http.StatusGone, err.Error())
		case errors.Is(err, events.ErrClosed) || ctx.Err() != nil:
			_ = c.Close(websocket.StatusGoingAway, "the agent is shutting down")
		default:
			_ = c.Close(websocket.StatusInternalError, err.Error())
		}
		return
	}

	contentType := "application/x-ndjson"
	if framing == framingSSE {
		contentType = "text/event-stream"
		w.Header().Set("Cache-Control", "no-cache")
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	var buf []byte
	err = forwardEvents(ctx, sub, func(ev events.Event, line []byte, more bool) error {
		if framing == framingSSE {
			buf = append(buf, "id: "...)
			buf = strconv.AppendUint(buf, ev.Seq, 10)
			buf = append(buf, "\ndata: "...)
			buf = append(buf, line...) // it ends in a newline
			buf = append(buf, '\n')
		} else {
			buf = append(buf, line...)
		}
		if more && len(buf) < 32<<10 {
			return nil // more are ready: one write and one flush for the lot
		}
		_, err := w.Write(buf)
		buf = buf[:0]
		if err != nil {
			return err
		}
		return rc.Flush()
	})
	if len(buf) > 0 {
		// Events batched when the stream ended (the agent shutting
		// down, the subscriber falling behind): they were ready, and
		// come before whatever ended it.
		if _, werr := w.Write(buf); werr == nil {
			_ = rc.Flush()
		}
	}
	var behind *events.FellBehindError
	if framing == framingSSE && errors.As(err, &behind) {
		// EventSource would reconnect and be told the same by a 410; the
		// message says it first.
		msg, _ := json.Marshal(httpapi.Error{Code: http.StatusGone, Message: err.Error()})
		_, _ = fmt.Fprintf(w, "event: error\ndata: %s\n\n", msg)
		_ = rc.Flush()
	}
	a.log(r).Debug("event stream ended", "err", err)
}

// forwardEvents sends each event of sub until the subscription or ctx ends,
// and returns why (never nil). send gets the event and its JSON line
// (newline included, shared: read-only); more says another is ready
// already, so a sender may batch, and must send what it holds once
// forwardEvents returns.
func forwardEvents(ctx context.Context, sub *events.Subscription, send func(ev events.Event, line []byte, more bool) error) error {
	for {
		ev, line, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		if err := send(ev, line, sub.Pending()); err != nil {
			return err
		}
	}
}

// eventsFrom is where a subscription starts: after the seq of
// Last-Event-ID or ?after=, else live. what names the one it used; msg
// says why it is no seq.
func eventsFrom(r *http.Request) (from events.From, what, msg string) {
	what, v := `header "Last-Event-ID"`, r.Header.Get(lastEventIDHeader)
	if v == "" {
		q, ok := r.URL.Query()["after"]
		if !ok {
			return events.Live(), "", ""
		}
		what, v = `query parameter "after"`, q[0]
	}
	seq, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		return events.From{}, what, fmt.Sprintf("%s: %s is not a seq (a whole number from 0: the seq of the last event read)", what, quoteShort(v))
	}
	return events.After(seq), what, ""
}

// negotiateEvents picks the framing: a WebSocket when asked to upgrade,
// else by Accept: the type of the highest q-value (the first of equals),
// never one of q=0; false when Accept takes none of them.
func negotiateEvents(r *http.Request) (eventFraming, bool) {
	if httpapi.WantsWebSocket(r) {
		return framingWebSocket, true
	}
	accept := r.Header.Values("Accept")
	if len(accept) == 0 {
		return framingNDJSON, true
	}
	best, bestQ := framingNDJSON, 0.0
	acceptEach(r, func(mt string, q float64) {
		var framing eventFraming
		switch mt {
		case "text/event-stream":
			framing = framingSSE
		case "application/x-ndjson", "application/*", "*/*":
			framing = framingNDJSON
		default:
			return
		}
		if q > bestQ {
			best, bestQ = framing, q
		}
	})
	return best, bestQ > 0
}

// writeSubscribeErr answers a subscription the journal refused; what names
// the parameter or header the seq came in.
func writeSubscribeErr(w http.ResponseWriter, what string, err error) {
	var expired *events.ExpiredError
	var future *events.FutureError
	switch {
	case errors.As(err, &expired):
		w.Header().Set(OldestSeqHeader, strconv.FormatUint(expired.Oldest, 10))
		httpapi.WriteError(w, http.StatusGone, what+": "+err.Error())
	case errors.As(err, &future):
		httpapi.WriteError(w, http.StatusBadRequest, what+": "+err.Error())
	case errors.Is(err, events.ErrClosed):
		httpapi.WriteError(w, http.StatusServiceUnavailable, "the agent is shutting down: "+err.Error())
	default:
		httpapi.WriteError(w, http.StatusInternalServerError, err.Error())
	}
}
