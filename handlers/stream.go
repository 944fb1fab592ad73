package handlers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// A WebSocket that fails after the upgrade closes with 4000 + the HTTP
// status the same failure would have had (4400, 4404, 4409, 4503), and
// the message as the close reason.
const wsStatusBase = 4000

// processFromRequest checks a run request against the contract and makes
// it a process. prefix is put before the fields' names in errors ("init."
// for an exec's).
func processFromRequest(req api.RunRequest, prefix string) (sandbox.Process, error) {
	p := sandbox.Process{
		Cmd:        req.Cmd,
		Env:        deref(req.Env),
		WorkingDir: deref(req.WorkingDir),
		User:       deref(req.User),
		TTY:        deref(req.Tty),
	}
	if err := checkCmd(prefix+"cmd", p.Cmd, true); err != nil {
		return p, err
	}
	if err := checkEnv(prefix+"env", p.Env); err != nil {
		return p, err
	}
	if err := dirRule.check(fieldName(prefix+"working_dir"), p.WorkingDir); err != nil {
		return p, err
	}
	if err := userRule.check(fieldName(prefix+"user"), p.User); err != nil {
		return p, err
	}
	timeout, err := checkSeconds(fieldName(prefix+"timeout_seconds"), deref(req.TimeoutSeconds), maxRunTimeoutSeconds, "7 days")
	p.Timeout = timeout
	return p, err
}

// cutStreams remembers the streams that were cut (sandbox.Output's
// Truncated notices), and why, for the exit message.
type cutStreams struct {
	streams []string
	why     []string
}

// note records o when it says its stream was cut, and reports whether o
// is only that notice, with no data to send.
func (c *cutStreams) note(o sandbox.Output) bool {
	if o.Truncated == "" {
		return false
	}
	if !slices.Contains(c.streams, o.Stream) {
		c.streams = append(c.streams, o.Stream)
		c.why = append(c.why, o.Stream+" was cut: "+o.Truncated)
	}
	return len(o.Data) == 0
}

// outputEncoder writes OutputMessages as JSON into a buffer it reuses, so
// streaming a gigabyte allocates nothing per chunk.
type outputEncoder struct{ buf []byte }

func (e *outputEncoder) data(stream string, p []byte, newline bool) []byte {
	e.buf = append(e.buf[:0], `{"stream":"`...)
	e.buf = append(e.buf, stream...) // stdout or stderr: nothing to escape
	e.buf = append(e.buf, `","data":"`...)
	e.buf = base64.StdEncoding.AppendEncode(e.buf, p)
	e.buf = append(e.buf, `"}`...)
	if newline {
		e.buf = append(e.buf, '\n')
	}
	return e.buf
}

// exit writes the exit message, which names the streams that were cut.
func (e *outputEncoder) exit(code int, cut *cutStreams, newline bool) []byte {
	e.buf = append(e.buf[:0], `{"stream":"exit","exit_code":`...)
	e.buf = strconv.AppendInt(e.buf, int64(code), 10)
	e.buf = append(e.buf, `,"done":true`...)
	if len(cut.streams) > 0 {
		streams, _ := json.Marshal(cut.streams)
		message, _ := json.Marshal(strings.Join(cut.why, "; "))
		e.buf = append(e.buf, `,"truncated":`...)
		e.buf = append(e.buf, streams...)
		e.buf = append(e.buf, `,"message":`...)
		e.buf = append(e.buf, message...)
	}
	e.buf = append(e.buf, '}')
	if newline {
		e.buf = append(e.buf, '\n')
	}
	return e.buf
}

// RunInSandbox runs a command and streams its output as NDJSON, each piece
// as it is produced, the exit code last. The status line waits for the
// first output, so a run that cannot start still gets its error status.
func (a *API) RunInSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	if !checkPathID(w, id) {
		return
	}
	p, ok := decodeBody(w, r, true, func(req api.RunRequest) (sandbox.Process, error) { return processFromRequest(req, "") })
	if !ok {
		return
	}
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	ctx, cancel := a.streamContext(r)
	defer cancel()
	rc := http.NewResponseController(w)
	started := false
	start := func() {
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusOK)
		}
	}
	var enc outputEncoder
	var cut cutStreams
	began := time.Now()
	code, err := m.Run(ctx, id, p, func(o sandbox.Output) error {
		if cut.note(o) {
			return nil
		}
		start()
		if _, err := w.Write(enc.data(o.Stream, o.Data, true)); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && !started && ctx.Err() == nil {
		writeSandboxErr(w, err)
		return
	}
	a.logRun(r, id, code, err, began, &cut)
	start()
	_, _ = w.Write(enc.exit(code, &cut, true))
}

func (a *API) logRun(r *http.Request, id string, code int, err error, began time.Time, cut *cutStreams) {
	log := a.log(r).With("sandbox", id, "exit_code", code, "took", time.Since(began))
	if len(cut.why) > 0 {
		log = log.With("truncated", strings.Join(cut.why, "; "))
	}
	if err != nil {
		log.Info("run ended early", "err", err)
		return
	}
	log.Info("run ended")
}

// RunInSandboxWebSocket runs a command over a WebSocket: the client's first
// message is the run request, then every output message is one text
// message. The client closing the socket kills the command.
func (a *API) RunInSandboxWebSocket(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	var req api.RunRequest
	a.serveWorkload(w, r, id, "a run", &req, func(ctx context.Context, m Sandboxes, c *websocket.Conn) {
		p, err := processFromRequest(req, "")
		if err != nil {
			closeWith(c, http.StatusBadRequest, err.Error())
			return
		}
		ctx = c.CloseRead(ctx) // a client that closes, or sends more, ends the run
		a.streamWorkload(ctx, ctx, c, r, id, func(out func(sandbox.Output) error) (int, error) {
			return m.Run(ctx, id, p, out)
		})
	})
}

// serveWorkload answers a run or exec WebSocket up to its first message:
// the sandbox's checks (acceptWorkload), the upgrade, and the first
// message decoded into first (a 4400 close naming what is wrong with it).
// Then serve runs with the request's stream context; the socket is closed
// when it returns.
func (a *API) serveWorkload(w http.ResponseWriter, r *http.Request, id, what string, first any, serve func(ctx context.Context, m Sandboxes, c *websocket.Conn)) {
	if !checkPathID(w, id) {
		return
	}
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	c := acceptWorkload(w, r, m, id, what)
	if c == nil {
		return
	}
	defer func() { _ = c.CloseNow() }()
	ctx, cancel := a.streamContext(r)
	defer cancel()
	_, msg, err := c.Read(ctx)
	if err != nil {
		return
	}
	if err := httpapi.DecodeJSONBytes(msg, first); err != nil {
		closeWith(c, http.StatusBadRequest, "first message: "+err.Error())
		return
	}
	serve(ctx, m, c)
}

// acceptWorkload answers what can be known before the upgrade with a plain
// status (an unknown sandbox 404, one that is not ready 409), then upgrades
// to a WebSocket (a request that is no handshake is a 426); nil when it
// has answered instead.
func acceptWorkload(w http.ResponseWriter, r *http.Request, m Sandboxes, id, what string) *websocket.Conn {
	info, err := m.Get(id)
	if err != nil {
		writeSandboxErr(w, err)
		return nil
	}
	if info.State != sandbox.StateReady {
		httpapi.WriteError(w, http.StatusConflict, fmt.Sprintf("sandbox %q is %s; %s needs it ready", id, info.State, what))
		return nil
	}
	return httpapi.AcceptWebSocket(w, r)
}

// streamWorkload runs a workload (run or exec) whose output goes to c as
// one message a piece, then the exit message and a normal close. A failure
// before any output, not caused by runCtx ending, closes with 4000 + its
// status instead. Writes use ctx.
func (a *API) streamWorkload(ctx, runCtx context.Context, c *websocket.Conn, r *http.Request, id string, start func(out func(sandbox.Output) error) (int, error)) {
	var enc outputEncoder
	var cut cutStreams
	started := false
	began := time.Now()
	code, err := start(func(o sandbox.Output) error {
		if cut.note(o) {
			return nil
		}
		started = true
		return c.Write(ctx, websocket.MessageText, enc.data(o.Stream, o.Data, false))
	})
	if err != nil && !started && runCtx.Err() == nil {
		closeWith(c, sandboxStatus(err), err.Error())
		return
	}
	a.logRun(r, id, code, err, began, &cut)
	if err := c.Write(ctx, websocket.MessageText, enc.exit(code, &cut, false)); err != nil {
		return
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// closeWith closes a WebSocket with 4000 + status and as much of message
// as a close frame holds.
func closeWith(c *websocket.Conn, status int, message string) {
	const maxReason = 123 // a close frame's payload is 125 bytes, 2 of them the code
	if len(message) > maxReason {
		message = message[:maxReason-3] + "..."
	}
	_ = c.Close(websocket.StatusCode(wsStatusBase+status), message)
}

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
	m := a.sandboxes(w, r)
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
