package handlers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// ExecInSandbox is the interactive exec WebSocket: the client's first
// message is {"init": ...}; then stdin, resize and close_stdin messages in,
// output messages out, the exit code last. The client closing the socket
// hangs up the process.
func (a *API) ExecInSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	info, err := m.Get(id)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	if info.State != sandbox.StateReady {
		httpapi.WriteError(w, http.StatusConflict, fmt.Sprintf("sandbox %q is %s; an exec needs it ready", id, info.State))
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return
	}
	defer func() { _ = c.CloseNow() }()
	c.SetReadLimit(httpapi.MaxBodyBytes)
	ctx, cancel := a.streamContext(r)
	defer cancel()

	_, msg, err := c.Read(ctx)
	if err != nil {
		return
	}
	var first api.ExecClientMessage
	if err := httpapi.DecodeJSONBytes(msg, &first); err != nil {
		closeWith(c, http.StatusBadRequest, "first message: "+err.Error())
		return
	}
	if first.Init == nil || first.Stdin != nil || first.Resize != nil || first.CloseStdin != nil {
		closeWith(c, http.StatusBadRequest, `the first message must be {"init": {...}} and nothing else`)
		return
	}
	in := first.Init
	p, err := processFromRequest(api.RunRequest{Cmd: in.Cmd, Env: in.Env, TimeoutSeconds: in.TimeoutSeconds, Tty: in.Tty, User: in.User, WorkingDir: in.WorkingDir})
	if err != nil {
		closeWith(c, http.StatusBadRequest, err.Error())
		return
	}
	xio := sandbox.ExecIO{}
	if in.TtySize != nil {
		size, err := ttySize(*in.TtySize, "init.tty_size")
		if err != nil {
			closeWith(c, http.StatusBadRequest, err.Error())
			return
		}
		xio.Size = &size
	}
	stdinR, stdinW := io.Pipe()
	defer stdinR.Close()
	resize := make(chan sandbox.TTYSize, 1)
	xio.Stdin, xio.Resize = stdinR, resize

	runCtx, hangUp := context.WithCancel(ctx)
	defer hangUp()
	go func() {
		// The client's messages. Any read error (the client went away, or
		// closed the socket) hangs up the process.
		defer hangUp()
		for {
			_, msg, err := c.Read(ctx)
			if err != nil {
				_ = stdinW.CloseWithError(err)
				return
			}
			var cm api.ExecClientMessage
			if err := httpapi.DecodeJSONBytes(msg, &cm); err != nil {
				_ = stdinW.CloseWithError(err)
				closeWith(c, http.StatusBadRequest, err.Error())
				return
			}
			switch {
			case cm.Init != nil:
				closeWith(c, http.StatusBadRequest, `"init" is only for the first message`)
				return
			case cm.Stdin != nil:
				if _, err := stdinW.Write(*cm.Stdin); err != nil {
					continue // the process no longer reads; its exit ends the exec
				}
			case cm.Resize != nil:
				size, err := ttySize(*cm.Resize, "resize")
				if err != nil {
					closeWith(c, http.StatusBadRequest, err.Error())
					return
				}
				select { // only the latest size matters
				case <-resize:
				default:
				}
				select {
				case resize <- size:
				case <-runCtx.Done():
					return
				}
			case cm.CloseStdin != nil && *cm.CloseStdin:
				_ = stdinW.Close()
			}
		}
	}()

	var enc outputEncoder
	started := false
	began := time.Now()
	code, err := m.Exec(runCtx, id, p, xio, func(o sandbox.Output) error {
		started = true
		return c.Write(ctx, websocket.MessageText, enc.data(o.Stream, o.Data, false))
	})
	if err != nil && !started && runCtx.Err() == nil {
		closeWith(c, sandboxStatus(err), err.Error())
		return
	}
	a.logRun(r, id, code, err, began)
	if err := c.Write(ctx, websocket.MessageText, enc.exit(code, false)); err != nil && !errors.Is(err, context.Canceled) {
		return
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

func ttySize(s api.TTYSize, field string) (sandbox.TTYSize, error) {
	if s.Width <= 0 || s.Height <= 0 || s.Width > 65535 || s.Height > 65535 {
		return sandbox.TTYSize{}, badRequest("field %q: width and height must be between 1 and 65535, got %dx%d", field, s.Width, s.Height)
	}
	return sandbox.TTYSize{Width: uint16(s.Width), Height: uint16(s.Height)}, nil
}
