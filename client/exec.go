package client

import (
	"context"
	"fmt"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
)

// ExecSession is an interactive exec (GET /v1/sandboxes/{id}/exec):
// Write sends stdin, Resize the terminal's size, CloseStdin the end of
// input, Signal a signal; Output yields the output and the exit. Writes
// may come from any goroutine while another one reads the output.
type ExecSession struct {
	session
}

// Exec starts init in sandbox id. A refusal before the upgrade (404,
// 409 ...) is an *Error; one after it, such as a bad init, ends Output
// with an *Error. ctx bounds the whole session; Close ends it early,
// or ending ctx, hangs up the process. Like RunSession it offers the
// binary channel subprotocol, in which stdin and the output travel as
// raw bytes, and falls back to the JSON messages.
func (c *Client) Exec(ctx context.Context, id string, init api.ExecInit) (*ExecSession, error) {
	s := &ExecSession{}
	if err := c.openSession(ctx, &s.session, id, "exec", "ExecClientMessage", api.ExecClientMessage{Init: &init}); err != nil {
		return nil, err
	}
	return s, nil
}

// Write sends p as the process's stdin.
func (s *ExecSession) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if s.channels {
		if err := s.sendFrame("stdin", wschannel.Stdin, p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	b := append([]byte(nil), p...)
	if err := s.send(api.ExecClientMessage{Stdin: &b}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseStdin closes the process's stdin: it reads the end of its input.
func (s *ExecSession) CloseStdin() error {
	if s.channels {
		return s.sendFrame("close_stdin", wschannel.Close, []byte{wschannel.Stdin})
	}
	t := true
	return s.send(api.ExecClientMessage{CloseStdin: &t})
}

// Resize sets the terminal's size (columns and rows, 1 to 65535).
func (s *ExecSession) Resize(width, height int) error {
	if width < 1 || width > 65535 || height < 1 || height > 65535 {
		return fmt.Errorf("resize to %dx%d: width and height are 1 to 65535", width, height)
	}
	if s.channels {
		return s.sendFrame("resize", wschannel.Resize, fmt.Appendf(nil, `{"width":%d,"height":%d}`, width, height))
	}
	return s.send(api.ExecClientMessage{Resize: &api.TTYSize{Width: int32(width), Height: int32(height)}})
}

// Signal sends the process a signal by name, with or without SIG
// ("SIGINT", "TERM"), as Ctrl-C would without a terminal. An unknown
// name ends the session with a 400 *Error from Output.
func (s *ExecSession) Signal(sig string) error {
	name := api.SignalName(sig)
	return s.send(api.ExecClientMessage{Signal: &name})
}

func (s *ExecSession) send(m api.ExecClientMessage) error {
	return s.sendJSON("ExecClientMessage", messageKind(m), m)
}

func messageKind(m api.ExecClientMessage) string {
	switch {
	case m.Init != nil:
		return "init"
	case m.Stdin != nil:
		return "stdin"
	case m.Resize != nil:
		return "resize"
	case m.Signal != nil:
		return "signal " + string(*m.Signal)
	}
	return "close_stdin"
}
