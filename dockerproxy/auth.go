package dockerproxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
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

// authChallenge is the WWW-Authenticate of every 401, the control API's.
const authChallenge = `Bearer realm="arcbox-agent"`

// tokenCheck holds only the token's SHA-256: digests of equal length are
// compared in constant time, so neither the token's bytes nor its length
// leak through timing.
type tokenCheck struct {
	enabled bool
	want    [sha256.Size]byte
}

func newTokenCheck(token string) tokenCheck {
	if token == "" {
		return tokenCheck{}
	}
	return tokenCheck{enabled: true, want: sha256.Sum256([]byte(token))}
}

func (tc tokenCheck) matches(s string) bool {
	got := sha256.Sum256([]byte(s))
	return subtle.ConstantTimeCompare(got[:], tc.want[:]) == 1
}

// needsToken reports whether connection c must authenticate: a token is
// configured and c is neither a unix socket nor vsock (a TCP connection,
// or one whose transport the proxy does not know).
func (p *Proxy) needsToken(c net.Conn) bool {
	if !p.token.enabled {
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
func (tc tokenCheck) refusal(r *http.Request) string {
	for k, vs := range r.URL.Query() {
		if tc.matches(k) || strings.EqualFold(k, "access_token") {
			return "a token in the URL never authenticates; send it in a header: Authorization: Bearer <token>"
		}
		for _, v := range vs {
			if tc.matches(v) {
				return "a token in the URL never authenticates; send it in a header: Authorization: Bearer <token>"
			}
		}
	}
	values := r.Header.Values("Authorization")
	switch {
	case len(values) == 0:
		return "no Authorization header; the Docker API on TCP wants Authorization: Bearer <token> " +
			`(for the docker CLI: "HttpHeaders": {"Authorization": "Bearer <token>"} in config.json)`
	case len(values) > 1:
		return "more than one Authorization header; send one: Authorization: Bearer <token>"
	}
	scheme, token, _ := strings.Cut(values[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "the Authorization header is not a Bearer token; want Authorization: Bearer <token>"
	}
	if !tc.matches(strings.TrimSpace(token)) {
		return "wrong bearer token"
	}
	return ""
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
	if why := p.token.refusal(req); why != "" {
		p.authRefused.Inc()
		p.log.Warn("refused a Docker API connection", "remote", remote(client), "reason", why)
		p.answer(client, answer(http.StatusUnauthorized, req.Method, "arcbox agent: "+why, authChallenge))
		return nil, "", false
	}
	return buf.Bytes(), req.Method, true
}
