package handlers

// The binary subprotocol of the run and exec WebSockets: output and input
// as binary messages whose first byte is the channel, after Kubernetes'
// v5.channel.k8s.io, so that a gigabyte of output is not a gigabyte and a
// third of base64 inside JSON. openapi.yaml's x-websocket of both
// operations is the contract; without the subprotocol the JSON messages
// are spoken, unchanged.

import (
	"context"
	"errors"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// wsOutput writes a run's or an exec's output, and its start and exit
// messages, in the protocol its client chose.
type wsOutput struct {
	c      *websocket.Conn
	binary bool
	enc    outputEncoder
	ch     [1]byte // the channel byte being sent
	// small joins the channel byte and a piece that fits the socket's
	// write buffer into one frame (see send).
	small [4096]byte
}

func newWSOutput(c *websocket.Conn) *wsOutput {
	return &wsOutput{c: c, binary: wschannel.Spoken(c)}
}

// data writes a piece of stdout or stderr: one binary message on its
// channel, or a JSON OutputMessage with the bytes in base64 (encoded once,
// into a buffer kept for the next piece).
func (o *wsOutput) data(ctx context.Context, stream string, p []byte) error {
	if !o.binary {
		return o.c.Write(ctx, websocket.MessageText, o.enc.data(stream, p, false))
	}
	ch := wschannel.Stdout
	if stream == sandbox.StreamStderr {
		ch = wschannel.Stderr
	}
	return o.send(ctx, ch, p)
}

// status writes a start or exit message (msg, from enc): a text message,
// or the JSON on the status channel.
func (o *wsOutput) status(ctx context.Context, msg []byte) error {
	if !o.binary {
		return o.c.Write(ctx, websocket.MessageText, msg)
	}
	return o.send(ctx, wschannel.Status, msg)
}

// send writes one binary message, the channel byte then p. A piece that
// fits the socket's write buffer (4 KiB), which copies it anyway, goes as
// one frame with its channel byte, joined in o.small: an interactive
// exec's output is mostly such. A larger one goes without copying p: as
// a frame of the channel byte and a continuation frame of p, which the
// write buffer does not copy past its first few KiB; joining the two in
// a buffer of ours would copy every byte once more, and keep a buffer as
// large as the largest piece for the stream's life. The empty frame that
// ends the message costs a write of 2 bytes. The client reads it as one
// message either way.
//
// A message that fails part way leaves the socket unusable (part of it
// is on the wire), and the library holds its writer until the message is
// closed: the socket is closed at once, so that the next write fails
// rather than waits.
func (o *wsOutput) send(ctx context.Context, ch byte, p []byte) error {
	if len(p) < len(o.small) {
		o.small[0] = ch
		n := copy(o.small[1:], p)
		return o.c.Write(ctx, websocket.MessageBinary, o.small[:1+n])
	}
	w, err := o.c.Writer(ctx, websocket.MessageBinary)
	if err != nil {
		return err
	}
	o.ch[0] = ch
	_, err = w.Write(o.ch[:])
	if err == nil {
		_, err = w.Write(p)
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		_ = o.c.CloseNow()
	}
	return err
}

// frameKind is what a client's binary message asks.
type frameKind int

const (
	frameNone frameKind = iota // asks nothing ({"close_stdin": false})
	frameStdin
	frameCloseStdin
	frameResize
	frameSignal // only as a JSON message
)

// clientFrame is what a client's message after the first asks: a binary
// one parsed, or a JSON one decoded (jsonFrame).
type clientFrame struct {
	kind frameKind
	data []byte          // frameStdin's bytes, a part of the message
	size sandbox.TTYSize // frameResize's size
	sig  sandbox.Signal  // frameSignal's signal
}

// parseClientFrame parses a binary message from an exec's client: stdin
// on channel 0, a resize on 4 ({"width","height"}, or Kubernetes'
// {"Width","Height"}), and [255, 0], the end of stdin. Anything else is
// a bad request naming what is wrong.
func parseClientFrame(msg []byte) (clientFrame, error) {
	if len(msg) == 0 {
		return clientFrame{}, badRequest("binary message: empty; its first byte is its channel (0 stdin, 4 resize, 255 close)")
	}
	ch, payload := msg[0], msg[1:]
	switch ch {
	case wschannel.Stdin:
		return clientFrame{kind: frameStdin, data: payload}, nil
	case wschannel.Resize:
		size, err := parseResize(payload)
		return clientFrame{kind: frameResize, size: size}, err
	case wschannel.Close:
		if len(payload) != 1 {
			return clientFrame{}, badRequest("close message (channel 255): %d bytes after the channel byte, want 1, the channel to close", len(payload))
		}
		if payload[0] != wschannel.Stdin {
			return clientFrame{}, badRequest("close message (channel 255) for channel %d: a client closes only stdin (0)", payload[0])
		}
		return clientFrame{kind: frameCloseStdin}, nil
	}
	return clientFrame{}, badRequest("binary message on channel %d: a client sends on stdin (0), resize (4) and close (255)", ch)
}

// resizeMessage is a resize's JSON, with this API's names or Kubernetes'
// (a terminal size in its remotecommand package).
type resizeMessage struct {
	Width     *int64 `json:"width"`
	Height    *int64 `json:"height"`
	K8sWidth  *int64 `json:"Width"`
	K8sHeight *int64 `json:"Height"`
}

func parseResize(payload []byte) (sandbox.TTYSize, error) {
	var m resizeMessage
	if err := httpapi.DecodeJSONBytes(payload, &m); err != nil {
		if errors.Is(err, httpapi.ErrEmptyBody) {
			return sandbox.TTYSize{}, badRequest(`resize message (channel 4): no JSON after the channel byte; want {"width":W,"height":H}`)
		}
		return sandbox.TTYSize{}, badRequest("resize message (channel 4): %v", err)
	}
	width, height := m.Width, m.Height
	if width == nil && height == nil {
		width, height = m.K8sWidth, m.K8sHeight
	} else if m.K8sWidth != nil || m.K8sHeight != nil {
		return sandbox.TTYSize{}, badRequest(`resize message (channel 4): both {"width","height"} and {"Width","Height"}; send one pair`)
	}
	if width == nil || height == nil {
		return sandbox.TTYSize{}, badRequest(`resize message (channel 4): want {"width":W,"height":H}, both set`)
	}
	return ttySize(*width, *height, "resize")
}
