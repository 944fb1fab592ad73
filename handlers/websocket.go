package handlers

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// A WebSocket that fails after the upgrade closes with 4000 + the HTTP
// status the same failure would have had (4400, 4404, 4409, 4429, 4500,
// 4503, 4507), and the message as the close reason; openapi.yaml lists
// every code each WebSocket operation uses, in its x-websocket.
const wsStatusBase = 4000

// serveWorkload answers a run or exec WebSocket up to its first message:
// the sandbox's checks (acceptWorkload), the upgrade, and the first
// message decoded into first (a 4400 close naming what is wrong with it;
// on the channel subprotocol too it is the JSON text message).
// Then serve runs with the request's stream context; the socket is closed
// when it returns.
func (a *API) serveWorkload(w http.ResponseWriter, r *http.Request, id, what string, first any, serve func(ctx context.Context, m SandboxManager, c *websocket.Conn)) {
	if !checkPathID(w, id) {
		return
	}
	m := a.manager(w, r)
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
	typ, msg, err := c.Read(ctx)
	if err != nil {
		return
	}
	if typ == websocket.MessageBinary && wschannel.Spoken(c) {
		closeWith(c, http.StatusBadRequest, "first message: binary; on "+wschannel.Protocol+" too the first is the JSON text message")
		return
	}
	if err := httpapi.DecodeJSONBytes(msg, first); err != nil {
		closeWith(c, http.StatusBadRequest, "first message: "+err.Error())
		return
	}
	serve(ctx, m, c)
}

// acceptWorkload answers what can be known before the upgrade with a plain
// status (an unknown sandbox 404, one that is neither ready nor running
// 409), then upgrades to a WebSocket (a request that is no handshake is a
// 426); nil when it has answered instead.
func acceptWorkload(w http.ResponseWriter, r *http.Request, m SandboxManager, id, what string) *websocket.Conn {
	info, err := m.Get(id)
	if err != nil {
		writeSandboxErr(w, err)
		return nil
	}
	if info.State != sandbox.StateReady && info.State != sandbox.StateRunning {
		httpapi.WriteError(w, http.StatusConflict, fmt.Sprintf("sandbox %q is %s; %s needs it ready or running", id, info.State, what))
		return nil
	}
	return httpapi.AcceptWebSocket(w, r, wschannel.Protocol)
}

// streamWorkload runs a workload (run or exec) whose output goes to c as
// one message a piece, then the exit message and a normal close; with
// p.DetachOnDisconnect a start message with the run's id comes first. On
// the channel subprotocol the pieces are binary messages on their
// channels and the start and exit go on the status channel (wsOutput). A
// failure before any output, not caused by runCtx ending, closes with
// 4000 + its status instead, and the agent's shutdown with 1001. Writes
// use ctx. start runs it with eio (Started set) and the output callback.
func (a *API) streamWorkload(ctx, runCtx context.Context, c *websocket.Conn, r *http.Request, id string, p sandbox.Process, eio sandbox.ExecIO,
	start func(eio sandbox.ExecIO, out func(sandbox.Output) error) (int, error)) {
	out := newWSOutput(c)
	var cut cutStreams
	var runID string
	started := false
	began := time.Now()
	eio.Started = func(info sandbox.RunInfo) {
		runID = info.ID
		if p.DetachOnDisconnect {
			started = true
			_ = out.status(ctx, out.enc.start(runID, false))
		}
	}
	code, err := start(eio, func(o sandbox.Output) error {
		if cut.note(o) {
			return nil
		}
		started = true
		return out.data(ctx, o.Stream, o.Data)
	})
	if err != nil && !started && runCtx.Err() == nil {
		closeWith(c, sandboxStatus(err), err.Error())
		return
	}
	a.logRun(r, id, code, err, began, &cut)
	if code == sandbox.ExitDetached {
		return // its client is gone; the run goes on
	}
	if a.stopping() {
		// The agent's shutdown killed the workload: say so, rather than
		// send an exit code the workload did not choose.
		_ = c.Close(websocket.StatusGoingAway, "the agent is shutting down")
		return
	}
	if err := out.status(ctx, out.enc.exit(code, runID, &cut, false)); err != nil {
		return
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// stopping reports whether the agent is shutting down.
func (a *API) stopping() bool {
	return a.cfg.Stopping != nil && a.cfg.Stopping.Err() != nil
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
