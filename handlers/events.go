package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// StreamEvents streams lifecycle events: over a WebSocket when the client
// asks to upgrade, else as NDJSON that stays open. The subscription is made
// before the response begins, so nothing after the status line is missed.
func (a *API) StreamEvents(w http.ResponseWriter, r *http.Request, params api.StreamEventsParams) {
	f := sandbox.EventFilter{SandboxID: deref(params.Id)}
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
	m := a.manager(w, r)
	if m == nil {
		return
	}
	sub := m.Subscribe(f)
	defer sub.Close()
	ctx, cancel := a.streamContext(r)
	defer cancel()

	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		c := httpapi.AcceptWebSocket(w, r)
		if c == nil {
			return
		}
		defer func() { _ = c.CloseNow() }()
		ctx = c.CloseRead(ctx)
		err := forwardEvents(ctx, sub, func(b []byte) error { return c.Write(ctx, websocket.MessageText, b) })
		switch {
		case errors.Is(err, sandbox.ErrSlowSubscriber):
			closeWith(c, http.StatusConflict, err.Error())
		case err != nil && ctx.Err() != nil:
			_ = c.Close(websocket.StatusGoingAway, "the agent is shutting down")
		case err != nil:
			_ = c.Close(websocket.StatusInternalError, err.Error())
		}
		return
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	err := forwardEvents(ctx, sub, func(b []byte) error {
		if _, err := w.Write(append(b, '\n')); err != nil {
			return err
		}
		return rc.Flush()
	})
	a.log(r).Debug("event stream ended", "err", err)
}

// forwardEvents sends each event of sub until the subscription or ctx ends.
func forwardEvents(ctx context.Context, sub *sandbox.Subscription, send func([]byte) error) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-sub.C():
			if !ok {
				return sub.Err()
			}
			b, err := json.Marshal(apiEvent(ev))
			if err != nil {
				return err
			}
			if err := send(b); err != nil {
				return err
			}
		}
	}
}

func apiEvent(ev sandbox.Event) api.Event {
	return api.Event{
		SandboxId:  ev.SandboxID,
		Action:     api.EventAction(ev.Action),
		Timestamp:  ev.Time.UnixNano(),
		Attributes: optMap(ev.Attributes),
	}
}
