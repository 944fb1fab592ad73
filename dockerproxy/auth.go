package dockerproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/arcbox/arcbox-agent/httpapi/bearer"
)

// A TCP listener is reachable by anyone who can reach the port, so with a
// token configured each connection that did not come over a unix socket
// (guarded by its file mode) or vsock (by the listener's CID filter) must
// show it: its first request must carry Authorization: Bearer <token>.
// The docker CLI sends the HttpHeaders of its config.json on every
// request, so each of its connections opens with the header. The proxy
// reads and checks that first request's head before it dials dockerd, then
// passes it on byte for byte; what follows on the connection is the
// authenticated client's, as on the unix socket. A refused connection gets
// a 401 in dockerd's error shape and never reaches dockerd.

// needsToken reports whether connection c must authenticate: a token is
// configured and c is neither a unix socket nor vsock (a TCP connection,
// or one whose transport the proxy does not know).
func (p *Proxy) needsToken(c net.Conn) bool {
	if !p.token.Set() {
		return false
	}
	if a := c.LocalAddr(); a != nil {
		switch a.Network() {
		case "unix", "vsock":
			return false
		}
	}
	return true
}

// refusal is why a first request does not authenticate; "" when it does.
// A token in the URL is refused even with the right header, so that it
// never reaches dockerd's logs.
func refusal(token bearer.Token, r *http.Request) string {
	if r.URL.RawQuery != "" && token.InURL(r.URL.Query(), true) {
		return bearer.InURLRefusal
	}
	return token.Refusal(r.Header, "no Authorization header; the Docker API on TCP wants Authorization: Bearer <token> "+
		`(for the docker CLI: "HttpHeaders": {"Authorization": "Bearer <token>"} in config.json)`)
}

// authenticate reads client's first request head, within maxHead bytes
// and the head timeout, and checks its token. It returns every byte it
// read (the head, and whatever followed it in the same reads), to be
// passed on to dockerd, and the request's method. When the request is
// refused or cannot be read it has answered the client itself, and ok is
// false: the caller closes the connection.
func (p *Proxy) authenticate(client net.Conn) (read []byte, method string, ok bool) {
	var buf bytes.Buffer
	if err := client.SetReadDeadline(time.Now().Add(p.headTimeout)); err != nil {
		return nil, "", false
	}
	req, err := http.ReadRequest(bufio.NewReader(io.TeeReader(io.LimitReader(client, maxHead), &buf)))
	if err := client.SetReadDeadline(time.Time{}); err != nil {
		return nil, "", false
	}
	if err != nil {
		if buf.Len() == 0 || errors.Is(err, net.ErrClosed) {
			p.log.Debug("no request before the connection ended; closed without an answer", "remote", remote(client), "error", err)
			return nil, "", false
		}
		// The parser's error may quote a header line, the token's
		// included: only its class is told.
		why := "a malformed request head"
		var ne net.Error
		switch {
		case buf.Len() >= maxHead:
			why = fmt.Sprintf("a request head over %d bytes", maxHead)
		case errors.As(err, &ne) && ne.Timeout():
			why = "no complete request head within " + p.headTimeout.String()
		case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
			why = "an incomplete request head"
		}
		p.authRefused.Inc()
		p.log.Warn("refused a Docker API connection: "+why, "remote", remote(client))
		p.answer(client, answer(http.StatusBadRequest, "", "arcbox agent: "+why, ""))
		return nil, "", false
	}
	if why := refusal(p.token, req); why != "" {
		p.authRefused.Inc()
		p.log.Warn("refused a Docker API connection", "remote", remote(client), "reason", why)
		p.answer(client, answer(http.StatusUnauthorized, req.Method, "arcbox agent: "+why, bearer.Challenge))
		return nil, "", false
	}
	return buf.Bytes(), req.Method, true
}
