// Package wschannel is what the agent's run and exec WebSockets and the
// SDK share of their binary subprotocol, after Kubernetes'
// v5.channel.k8s.io: each binary message's first byte is its channel.
// openapi.yaml's x-websocket of both operations is the contract.
package wschannel

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/coder/websocket"
)

// Protocol is the subprotocol's name in Sec-WebSocket-Protocol.
const Protocol = "v5.channel.k8s.io"

// The channels: a binary message's first byte.
const (
	Stdin  byte = 0
	Stdout byte = 1
	Stderr byte = 2
	// Status carries the JSON start and exit messages, the same
	// OutputMessages the JSON protocol sends.
	Status byte = 3
	Resize byte = 4
	// Close's payload is one byte, the channel it closes: [255, 0] ends
	// stdin.
	Close byte = 255
)

// Spoken reports whether c's handshake chose the subprotocol:
// coder/websocket matches a client's offer with letter case aside, and
// echoes the client's spelling.
func Spoken(c *websocket.Conn) bool {
	return strings.EqualFold(c.Subprotocol(), Protocol)
}

// ReadMessage reads c's next message into *buf, growing it as needed (the
// read limit bounds it), so that a stream allocates nothing per message
// that fits; the message is valid until the next read into *buf.
func ReadMessage(ctx context.Context, c *websocket.Conn, buf *[]byte) (websocket.MessageType, []byte, error) {
	typ, r, err := c.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	b := (*buf)[:0]
	defer func() { *buf = b[:0] }()
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			return typ, b, nil
		}
		if err != nil {
			return 0, nil, err
		}
	}
}
