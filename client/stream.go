package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/coder/websocket"
)

// openMessages opens a stream of JSON messages on path, NDJSON or a
// WebSocket, and returns how to read its next message and how to close
// it. read answers io.EOF at the stream's clean end (a normal close, or
// an NDJSON body that ends after a whole line), an *Error for a close
// with 4000+status, and another error for a stream that broke. what
// names the messages in errors ("event").
func (c *Client) openMessages(ctx context.Context, path string, q url.Values, overWS bool, what string) (read func() ([]byte, error), closeConn func(), err error) {
	if overWS {
		ws, release, err := c.dialWS(ctx, path, q)
		if err != nil {
			return nil, nil, err
		}
		read = func() ([]byte, error) {
			typ, msg, err := ws.Read(ctx)
			var ce websocket.CloseError
			switch {
			case websocket.CloseStatus(err) == websocket.StatusNormalClosure:
				return nil, io.EOF
			case errors.As(err, &ce) && ce.Code >= 4000 && ce.Code <= 4999:
				return nil, &Error{Code: int(ce.Code) - 4000, Message: ce.Reason, Closed: true}
			case err != nil:
				return nil, err
			case typ != websocket.MessageText:
				return nil, fmt.Errorf("%s message of type %v, want text", what, typ)
			}
			return msg, nil
		}
		return read, func() {
			_ = ws.Close(websocket.StatusNormalClosure, "")
			release()
		}, nil
	}
	req, err := c.newRequest(ctx, http.MethodGet, path, q)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/x-ndjson")
	body, err := c.openStream(req)
	if err != nil {
		return nil, nil, err
	}
	r := bufio.NewReaderSize(body, 1<<20)
	var long []byte
	read = func() ([]byte, error) {
		for {
			line, err := readLine(r, &long)
			if errors.Is(err, io.EOF) && len(line) > 0 {
				// A line the end of the stream cut short is no message:
				// the reconnect brings it whole.
				return nil, io.ErrUnexpectedEOF
			}
			if err != nil {
				return nil, err
			}
			if line = bytes.TrimSpace(line); len(line) > 0 {
				return line, nil
			}
		}
	}
	return read, func() { _ = body.Close() }, nil
}
