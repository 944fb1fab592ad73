package handlers

import (
	"context"
	"io"
	"net/http"

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
	var first api.ExecClientMessage
	a.serveWorkload(w, r, id, "an exec", &first, func(ctx context.Context, m Sandboxes, c *websocket.Conn) {
		a.exec(ctx, m, c, r, id, first)
	})
}

// exec serves an exec WebSocket once its first message is read.
func (a *API) exec(ctx context.Context, m Sandboxes, c *websocket.Conn, r *http.Request, id string, first api.ExecClientMessage) {
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

	a.streamWorkload(ctx, runCtx, c, r, id, func(out func(sandbox.Output) error) (int, error) {
		return m.Exec(runCtx, id, p, xio, out)
	})
}

func ttySize(s api.TTYSize, field string) (sandbox.TTYSize, error) {
	if s.Width <= 0 || s.Height <= 0 || s.Width > 65535 || s.Height > 65535 {
		return sandbox.TTYSize{}, badRequest("field %q: width and height must be between 1 and 65535, got %dx%d", field, s.Width, s.Height)
	}
	return sandbox.TTYSize{Width: uint16(s.Width), Height: uint16(s.Height)}, nil
}
