package handlers

import (
	"context"
	"io"
	"net/http"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// ExecInSandbox is the interactive exec WebSocket: the client's first
// message is {"init": ...}; then stdin, resize and close_stdin messages in,
// output messages out, the exit code last; on the channel subprotocol
// (channel.go) stdin, resize, the end of stdin and the output are binary
// messages instead. The client closing the socket hangs up the process.
func (a *API) ExecInSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	var first api.ExecClientMessage
	a.serveWorkload(w, r, id, "an exec", &first, func(ctx context.Context, m SandboxManager, c *websocket.Conn) {
		a.serveExec(ctx, m, c, r, id, first)
	})
}

// serveExec serves an exec WebSocket once its first message is read.
func (a *API) serveExec(ctx context.Context, m SandboxManager, c *websocket.Conn, r *http.Request, id string, first api.ExecClientMessage) {
	p, size, err := checkClientMessage(first)
	if err == nil && first.Init == nil {
		err = badRequest(`the first message must be {"init": {...}}`)
	}
	if err != nil {
		closeWith(c, http.StatusBadRequest, err.Error())
		return
	}
	sigs := make(chan sandbox.Signal)
	stdio := sandbox.ExecIO{Size: size, Signals: sigs}
	stdinR, stdinW := io.Pipe()
	defer func() {
		if p.DetachOnDisconnect {
			// A run that outlives this handler keeps its stdin open.
			_ = stdinW.CloseWithError(sandbox.ErrStdinDetached)
			return
		}
		_ = stdinR.Close()
	}()
	resize := make(chan sandbox.TTYSize, 1)
	stdio.Stdin, stdio.Resize = stdinR, resize

	runCtx, hangUp := context.WithCancel(ctx)
	defer hangUp()
	go func() {
		// The client's messages. Any read error (the client went away, or
		// closed the socket) hangs up the process.
		defer hangUp()
		var in []byte // each message's, reused: a stream of stdin allocates nothing per message
		channels := wschannel.Spoken(c)
		for {
			typ, msg, err := wschannel.ReadMessage(ctx, c, &in)
			if err != nil {
				if p.DetachOnDisconnect {
					// The process outlives its client: its stdin is
					// left open, not ended.
					err = sandbox.ErrStdinDetached
				}
				_ = stdinW.CloseWithError(err)
				return
			}
			var f clientFrame
			if channels && typ == websocket.MessageBinary {
				f, err = parseClientFrame(msg)
			} else {
				f, err = jsonFrame(msg)
			}
			if err != nil {
				_ = stdinW.CloseWithError(err)
				closeWith(c, http.StatusBadRequest, err.Error())
				return
			}
			switch f.kind {
			case frameStdin:
				// The pipe hands the bytes over before Write returns, so
				// the message's buffer can be read into again.
				if len(f.data) == 0 {
					continue
				}
				if _, err := stdinW.Write(f.data); err != nil {
					continue // the process no longer reads; its exit ends the exec
				}
			case frameResize:
				select { // only the latest size matters
				case <-resize:
				default:
				}
				select {
				case resize <- f.size:
				case <-runCtx.Done():
					return
				}
			case frameCloseStdin:
				_ = stdinW.Close()
			case frameSignal:
				select {
				case sigs <- f.sig:
				case <-runCtx.Done():
					return
				}
			}
		}
	}()

	a.streamWorkload(ctx, runCtx, c, r, id, p, stdio, func(eio sandbox.ExecIO, out func(sandbox.Output) error) (int, error) {
		p, err := m.ResolveCmd(id, p)
		if err != nil {
			return -1, err
		}
		return m.Exec(runCtx, id, p, eio, out)
	})
}

// jsonFrame decodes and checks a JSON client message after the first,
// as the frame it is the same as.
func jsonFrame(msg []byte) (clientFrame, error) {
	var cm api.ExecClientMessage
	err := httpapi.DecodeJSONBytes(msg, &cm)
	var size *sandbox.TTYSize
	if err == nil {
		_, size, err = checkClientMessage(cm)
	}
	if err == nil && cm.Init != nil {
		err = badRequest(`"init" is only for the first message`)
	}
	if err != nil {
		return clientFrame{}, err
	}
	switch {
	case cm.Stdin != nil:
		return clientFrame{kind: frameStdin, data: *cm.Stdin}, nil
	case cm.Resize != nil:
		return clientFrame{kind: frameResize, size: *size}, nil
	case cm.Signal != nil:
		sig, err := sandbox.ParseSignal(string(*cm.Signal))
		return clientFrame{kind: frameSignal, sig: sig}, err
	case cm.CloseStdin != nil && *cm.CloseStdin:
		return clientFrame{kind: frameCloseStdin}, nil
	}
	return clientFrame{kind: frameNone}, nil // {"close_stdin": false}
}

// checkClientMessage checks a client message against the contract: one
// field set, an init's or a resize's fields within their bounds. It
// returns an init's process and terminal size, or a resize's size. Which
// message may come when (init first, and only first) is exec's business.
func checkClientMessage(cm api.ExecClientMessage) (sandbox.Process, *sandbox.TTYSize, error) {
	if err := checkOneField(cm); err != nil {
		return sandbox.Process{}, nil, err
	}
	switch {
	case cm.Resize != nil:
		size, err := ttySize(int64(cm.Resize.Width), int64(cm.Resize.Height), "resize")
		return sandbox.Process{}, &size, err
	case cm.Init == nil:
		return sandbox.Process{}, nil, nil
	}
	in := cm.Init
	p, err := processFromRequest(api.RunRequest{Cmd: in.Cmd, Env: in.Env, TimeoutSeconds: in.TimeoutSeconds, Tty: in.Tty, User: in.User, WorkingDir: in.WorkingDir,
		DetachOnDisconnect: in.DetachOnDisconnect}, "init.")
	if err != nil || in.TtySize == nil {
		return p, nil, err
	}
	size, err := ttySize(int64(in.TtySize.Width), int64(in.TtySize.Height), "init.tty_size")
	return p, &size, err
}

// checkOneField refuses a client message that sets no field or several:
// each says one thing.
func checkOneField(cm api.ExecClientMessage) error {
	n := 0
	for _, set := range []bool{cm.Init != nil, cm.Stdin != nil, cm.Resize != nil, cm.CloseStdin != nil, cm.Signal != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return badRequest("a message sets exactly one of init, stdin, resize, close_stdin and signal; this one sets %d", n)
	}
	return nil
}

// ttySize checks a terminal size a client sent as field (its width and
// height), from JSON or from the channel subprotocol's resize.
func ttySize(width, height int64, field string) (sandbox.TTYSize, error) {
	if err := checkRange(fieldName(field+".width"), width, 1, maxTTYSide, "a terminal's size is 16 bits"); err != nil {
		return sandbox.TTYSize{}, err
	}
	if err := checkRange(fieldName(field+".height"), height, 1, maxTTYSide, "a terminal's size is 16 bits"); err != nil {
		return sandbox.TTYSize{}, err
	}
	return sandbox.TTYSize{Width: uint16(width), Height: uint16(height)}, nil
}
