package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/url"
	"sync"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
)

// ExecSession is an interactive exec (GET /v1/sandboxes/{id}/exec):
// Write sends stdin, Resize the terminal's size, CloseStdin the end of
// input, Signal a signal; Output yields the output and the exit. Writes
// may come from any goroutine while another one reads the output.
type ExecSession struct {
	c        *Client
	ctx      context.Context
	ws       *websocket.Conn
	release  func()
	dec      outputDecoder
	channels bool // the agent selected the channel subprotocol

	frameMu sync.Mutex
	frame   []byte // a channel message being sent, reused

	mu   sync.Mutex
	exit *Exit
	err  error // how the output ended, when not with an exit
}

// Exec starts init in sandbox id. A refusal before the upgrade (404,
// 409 ...) is an *Error; one after it, such as a bad init, ends Output
// with an *Error. ctx bounds the whole session; Close ends it early,
// or ending ctx, hangs up the process. Like RunWS it offers the binary
// channel subprotocol, in which stdin and the output travel as raw
// bytes, and falls back to the JSON messages.
func (c *Client) Exec(ctx context.Context, id string, init api.ExecInit) (*ExecSession, error) {
	ws, release, err := c.dialWS(ctx, "/v1/sandboxes/"+url.PathEscape(id)+"/exec", nil, c.workloadProtocols()...)
	if err != nil {
		return nil, err
	}
	s := &ExecSession{c: c, ctx: ctx, ws: ws, release: release, channels: ws.Subprotocol() == wschannel.Protocol}
	if err := s.send(api.ExecClientMessage{Init: &init}); err != nil {
		release()
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
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	s.c.see("ExecClientMessage", raw)
	if err := s.ws.Write(s.ctx, websocket.MessageText, raw); err != nil {
		return fmt.Errorf("exec: send %s: %w", messageKind(m), err)
	}
	return nil
}

// sendFrame sends payload on channel ch of the channel subprotocol, the
// channel byte and the payload copied once into a buffer kept for the
// next; what names it in errors.
func (s *ExecSession) sendFrame(what string, ch byte, payload []byte) error {
	s.frameMu.Lock()
	defer s.frameMu.Unlock()
	s.frame = append(append(s.frame[:0], ch), payload...)
	if err := s.ws.Write(s.ctx, websocket.MessageBinary, s.frame); err != nil {
		return fmt.Errorf("exec: send %s (channel %d): %w", what, ch, err)
	}
	return nil
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

// Output yields the output as it comes, the exit last. One goroutine
// reads it; a loop that breaks early may range over it again to go on.
func (s *ExecSession) Output() iter.Seq2[Output, error] {
	return func(yield func(Output, error) bool) {
		s.mu.Lock()
		x, xerr := s.exit, s.err
		s.mu.Unlock()
		switch {
		case x != nil:
			yield(Output{Stream: "exit", Exit: x}, nil)
			return
		case xerr != nil:
			yield(Output{}, xerr)
			return
		}
		for o, err := range s.c.wsOutput(s.ctx, s.ws, &s.dec) {
			if o.Exit != nil || err != nil {
				s.mu.Lock()
				if o.Exit != nil {
					s.exit = o.Exit
				} else if s.exit == nil {
					s.err = err
				}
				s.mu.Unlock()
			}
			if !yield(o, err) {
				return
			}
		}
	}
}

// Wait reads (and drops) the output up to the exit and returns it.
func (s *ExecSession) Wait() (*Exit, error) {
	for o, err := range s.Output() {
		if err != nil {
			return nil, err
		}
		if o.Exit != nil {
			return o.Exit, nil
		}
	}
	return nil, errors.New("exec: the output ended without an exit")
}

// Close ends the session, hanging up the process if it still runs.
func (s *ExecSession) Close() error {
	s.release()
	return nil
}
