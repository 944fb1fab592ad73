package dockerproxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// When dockerd's socket cannot be dialled (not there, refused), the proxy
// answers the client itself, as dockerd answers its own errors: a 502 with
// a JSON body {"message": "..."}, which the docker CLI prints. It first
// reads the client's request head (up to the end of its headers, within a
// bound and a deadline): closing a connection with unread bytes would
// reset it, and the client would lose the answer.

const (
	// maxHead bounds the request head read before the answer: Go's
	// net/http default for a server's headers.
	maxHead = 1 << 20
	// defaultHeadTimeout bounds the wait for the request head.
	defaultHeadTimeout = 10 * time.Second
	// answerTimeout bounds the write of the answer.
	answerTimeout = 10 * time.Second
	// lingerTimeout and maxLinger bound the drain of what the client
	// still sends (a request body) after the answer, before the close.
	lingerTimeout = 2 * time.Second
	maxLinger     = 1 << 20
	// maxMethod bounds the method kept from the request line.
	maxMethod = 16
)

// headScanner finds the end of an HTTP request head (the empty line after
// the header lines) in bytes fed in pieces, and keeps the request line's
// method. Lines end with LF, a CR before it optional; empty lines before
// the request line are skipped, as RFC 9112 lets a server do.
type headScanner struct {
	n          int  // bytes fed so far
	line       int  // bytes on the current line, CRs not counted
	sawLine    bool // a non-empty line (the request line) has ended
	methodDone bool
	method     []byte
	done       bool
	end        int // the offset just past the head, once done
}

// feed scans p, which follows what was fed before, and reports whether
// the head has ended; bytes after its end are left unscanned.
func (s *headScanner) feed(p []byte) bool {
	for _, b := range p {
		if s.done {
			break
		}
		s.n++
		switch b {
		case '\n':
			if s.line == 0 && s.sawLine {
				s.done, s.end = true, s.n
			} else if s.line > 0 {
				s.sawLine, s.methodDone = true, true
			}
			s.line = 0
		case '\r':
		default:
			s.line++
			if !s.methodDone {
				if b == ' ' {
					s.methodDone = true
				} else if len(s.method) < maxMethod {
					s.method = append(s.method, b)
				}
			}
		}
	}
	return s.done
}

// errHeadTooLarge: the request head did not end within maxHead bytes.
var errHeadTooLarge = errors.New("request head too large")

// readHead reads c until the end of a request head, at most limit bytes,
// until deadline. It returns what it found of the method and how many
// bytes it read, with an error when the head did not end.
func readHead(c net.Conn, limit int, deadline time.Time) (method string, read int, err error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return "", 0, err
	}
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	var s headScanner
	buf := make([]byte, 4096)
	for s.n < limit {
		n, rerr := c.Read(buf[:min(len(buf), limit-s.n)])
		read += n
		if s.feed(buf[:n]) {
			return string(s.method), read, nil
		}
		if rerr != nil {
			return string(s.method), read, rerr
		}
	}
	return string(s.method), read, errHeadTooLarge
}

// answer is an answer of the proxy's own: the status with dockerd's
// error shape, {"message": "..."}, no body for a HEAD, and a
// WWW-Authenticate challenge when one is given.
func answer(status int, method, message, challenge string) []byte {
	body, _ := json.Marshal(struct {
		Message string `json:"message"`
	}{message})
	body = append(body, '\n')
	var head strings.Builder
	fmt.Fprintf(&head, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	if challenge != "" {
		fmt.Fprintf(&head, "WWW-Authenticate: %s\r\n", challenge)
	}
	fmt.Fprintf(&head, "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", len(body))
	if method == http.MethodHead {
		return []byte(head.String())
	}
	return append([]byte(head.String()), body...)
}

// unavailableMessage tells the client that dockerd could not be reached.
func unavailableMessage(dialErr error) string {
	return fmt.Sprintf("arcbox agent: cannot reach dockerd: %v (POST /v1/runtime/ensure starts the runtime)", dialErr)
}

// answerUnavailable answers the client that dockerd could not be reached
// (dialErr), once its request head is read. A client that sent nothing
// gets no answer: it is not an HTTP client, or it left.
func (p *Proxy) answerUnavailable(client net.Conn, dialErr error) {
	method, read, err := readHead(client, maxHead, time.Now().Add(p.headTimeout))
	if read == 0 {
		p.log.Debug("no request before the connection ended; closed without an answer", "remote", remote(client), "error", err)
		return
	}
	if err != nil {
		p.log.Debug("answering 502 to an incomplete request head", "remote", remote(client), "error", err)
	}
	p.answer(client, answer(http.StatusBadGateway, method, unavailableMessage(dialErr), ""))
}

// answer writes msg to the client, whose request head was read, and
// closes its write side; what the client still sends (a request body) is
// drained, within bounds, before the caller closes the connection, since
// closing with unread bytes would reset it and lose the answer.
func (p *Proxy) answer(client net.Conn, msg []byte) {
	if err := client.SetWriteDeadline(time.Now().Add(answerTimeout)); err != nil {
		return
	}
	if _, err := client.Write(msg); err != nil {
		p.log.Debug("write the proxy's answer", "remote", remote(client), "error", err)
		return
	}
	if cw, ok := client.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			_ = client.SetReadDeadline(time.Now().Add(lingerTimeout))
			_, _ = io.Copy(io.Discard, io.LimitReader(client, maxLinger))
		}
	}
}
