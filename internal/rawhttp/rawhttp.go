// Package rawhttp is the leanest HTTP/1.1 client a host could write, for
// benchmarks that measure a server rather than a client library: one
// kept-alive connection, the request's bytes written as they are, the
// response read by its Content-Length, and no allocation per request.
package rawhttp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
)

// Client sends one request over and over on one connection.
type Client struct {
	conn net.Conn
	br   *bufio.Reader
	req  []byte
}

// Get is the bytes of a GET of path.
func Get(path string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: bench\r\n\r\n")
}

// Dial connects to addr; every Do sends req, a whole HTTP/1.1 request.
func Dial(network, addr string, req []byte) (*Client, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	return &Client{conn: c, br: bufio.NewReaderSize(c, 16<<10), req: req}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

var contentLength = []byte("content-length:")

// Do sends the request and reads its answer, which must be a 200 with a
// Content-Length; the body is read and dropped.
func (c *Client) Do() error {
	if _, err := c.conn.Write(c.req); err != nil {
		return err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("status line %q, want 200", line)
	}
	n := -1
	for {
		line, err = c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 { // the blank line that ends the header
			break
		}
		if len(line) > len(contentLength) && bytes.EqualFold(line[:len(contentLength)], contentLength) {
			if n = atoiTrim(line[len(contentLength):]); n < 0 {
				return fmt.Errorf("header %q: not a length", line)
			}
		}
	}
	if n < 0 {
		return errors.New("an answer without Content-Length")
	}
	_, err = c.br.Discard(n)
	return err
}

// atoiTrim parses the digits of a header value, ignoring the white space
// around them; -1 when there are none.
func atoiTrim(v []byte) int {
	n, seen := 0, false
	for _, ch := range v {
		switch {
		case ch >= '0' && ch <= '9':
			n, seen = n*10+int(ch-'0'), true
		case ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n':
		default:
			return -1
		}
	}
	if !seen {
		return -1
	}
	return n
}
