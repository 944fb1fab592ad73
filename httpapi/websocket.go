package httpapi

import (
	"net/http"
	"strings"

	"github.com/coder/websocket"
)

// WantsWebSocket reports whether r asks to be upgraded to a WebSocket: a
// token of its Upgrade headers is "websocket", letter case aside, as
// coder/websocket's handshake reads it. The handlers that serve a stream
// either way and the audit decide by it alike.
func WantsWebSocket(r *http.Request) bool {
	for _, v := range r.Header.Values("Upgrade") {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "websocket") {
				return true
			}
		}
	}
	return false
}

// AcceptWebSocket upgrades r to a WebSocket whose messages are at most
// MaxBodyBytes. subprotocols are the ones the endpoint speaks besides
// its default messages: the first of them the client's
// Sec-WebSocket-Protocol offers, letter case aside, is selected (the
// Conn's Subprotocol, in the client's spelling), and none is selected
// when the client offers none of them. A request that
// is no WebSocket handshake, or a broken one, is answered with the status
// coder/websocket chose for it (426 without the Upgrade headers, 400 for
// a bad key or version, 403 for a foreign Origin) in the API's JSON error
// shape, not its plain text; then it returns nil.
func AcceptWebSocket(w http.ResponseWriter, r *http.Request, subprotocols ...string) *websocket.Conn {
	ew := &acceptErrors{ResponseWriter: w}
	c, err := websocket.Accept(ew, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled, Subprotocols: subprotocols})
	if err != nil {
		if ew.status != 0 {
			msg := strings.TrimSpace(string(ew.body))
			if ew.status == http.StatusUpgradeRequired {
				msg += "; this endpoint is a WebSocket: connect with a WebSocket client"
			}
			WriteError(w, ew.status, msg)
		}
		return nil
	}
	c.SetReadLimit(MaxBodyBytes)
	return c
}

// acceptErrors holds back the plain-text error websocket.Accept writes,
// so that AcceptWebSocket can answer it as JSON; a successful handshake
// (101) passes through, and Unwrap lets Accept hijack the connection.
type acceptErrors struct {
	http.ResponseWriter
	status int
	body   []byte
}

func (w *acceptErrors) WriteHeader(code int) {
	if code >= http.StatusBadRequest {
		w.status = code
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *acceptErrors) Write(p []byte) (int, error) {
	if w.status != 0 {
		w.body = append(w.body, p...)
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

func (w *acceptErrors) Unwrap() http.ResponseWriter { return w.ResponseWriter }
