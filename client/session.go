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

	"github.com/arcbox/arcbox-agent/internal/wschannel"
)

// session is what RunSession and ExecSession share: the run or exec
// WebSocket, the client's messages sent on it, and the output read from
// it up to the exit. Sends may come from any goroutine while another one
// reads the output.
type session struct {
	c        *Client
	ctx      context.Context
	ws       *websocket.Conn
	release  func()
	what     string // "run" or "exec": the endpoint, and what errors name
	channels bool   // the agent selected the channel subprotocol
	dec      outputDecoder

	frameMu sync.Mutex
	frame   []byte // a channel message being sent, reused

	mu   sync.Mutex
	exit *Exit
	err  error // how the output ended, when not with an exit
}

// openSession opens s on the what ("run" or "exec") WebSocket of
// sandbox id, offering the channel subprotocol unless the client speaks
// JSON only, and sends first as its first message, a JSON text message
// on either protocol; schema names first for the observer. A refusal
// before the upgrade is an *Error.
func (c *Client) openSession(ctx context.Context, s *session, id, what, schema string, first any) error {
	ws, release, err := c.dialWS(ctx, "/v1/sandboxes/"+url.PathEscape(id)+"/"+what, nil, c.workloadProtocols()...)
	if err != nil {
		return err
	}
	s.c, s.ctx, s.ws, s.release, s.what, s.channels = c, ctx, ws, release, what, wschannel.Spoken(ws)
	if err := s.sendJSON(schema, "the request", first); err != nil {
		release()
		return err
	}
	return nil
}

// sendJSON sends m as a JSON text message, which both protocols take for
// every message but stdin, resizes and the end of stdin; schema names it
// for the observer, kind in errors.
func (s *session) sendJSON(schema, kind string, m any) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("%s: send %s: %w", s.what, kind, err)
	}
	s.c.see(schema, raw)
	if err := s.ws.Write(s.ctx, websocket.MessageText, raw); err != nil {
		return fmt.Errorf("%s: send %s: %w", s.what, kind, err)
	}
	return nil
}

// sendFrame sends payload on channel ch of the channel subprotocol, the
// channel byte and the payload copied once into a buffer kept for the
// next; kind names it in errors.
func (s *session) sendFrame(kind string, ch byte, payload []byte) error {
	s.frameMu.Lock()
	defer s.frameMu.Unlock()
	s.frame = append(append(s.frame[:0], ch), payload...)
	if err := s.ws.Write(s.ctx, websocket.MessageBinary, s.frame); err != nil {
		return fmt.Errorf("%s: send %s (channel %d): %w", s.what, kind, ch, err)
	}
	return nil
}

// Output yields the output as it comes, the exit last; a failure after
// the upgrade (a bad request or signal, a sandbox gone) ends it with an
// *Error carrying the close code's status. One goroutine reads it; a
// loop that breaks early may range over it again to go on, and once the
// output has ended it yields the exit, or the error, again.
func (s *session) Output() iter.Seq2[Output, error] {
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
func (s *session) Wait() (*Exit, error) {
	for o, err := range s.Output() {
		if err != nil {
			return nil, err
		}
		if o.Exit != nil {
			return o.Exit, nil
		}
	}
	return nil, errors.New(s.what + ": the output ended without an exit")
}

// Close ends the session, hanging the process up if it still runs
// (SIGHUP, then SIGKILL after a grace), unless it detaches on
// disconnect.
func (s *session) Close() error {
	s.release()
	return nil
}
