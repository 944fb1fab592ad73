package dockerproxy

import (
	"bytes"
	"testing"
)

// refHead is the request head's end and method found the slow way, from
// the whole input: its lines (CRs dropped), the first non-empty one the
// request line, the first empty one after it the end.
func refHead(data []byte) (end int, method string, ok bool) {
	firstToken := func(line []byte) string {
		tok, _, _ := bytes.Cut(line, []byte(" "))
		return string(tok[:min(len(tok), maxMethod)])
	}
	sawLine, pos := false, 0
	for {
		i := bytes.IndexByte(data[pos:], '\n')
		if i < 0 {
			break
		}
		line := bytes.ReplaceAll(data[pos:pos+i], []byte("\r"), nil)
		pos += i + 1
		if len(line) == 0 {
			if sawLine {
				return pos, method, true
			}
			continue
		}
		if !sawLine {
			sawLine, method = true, firstToken(line)
		}
	}
	if !sawLine {
		method = firstToken(bytes.ReplaceAll(data[pos:], []byte("\r"), nil))
	}
	return 0, method, false
}

// FuzzHeadScanner checks the scanner of request heads against refHead,
// however the input is cut into pieces: the same end, the same method,
// and never a byte scanned past the end.
func FuzzHeadScanner(f *testing.F) {
	f.Add([]byte("GET /_ping HTTP/1.1\r\nHost: docker\r\nUser-Agent: Docker-Client/24.0.7 (linux)\r\n\r\n"), uint8(7))
	f.Add([]byte("HEAD /_ping HTTP/1.1\r\nHost: api.moby.localhost\r\n\r\n"), uint8(1))
	f.Add([]byte("POST /v1.43/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"), uint8(13))
	f.Add([]byte("POST /v1.43/build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), uint8(3))
	f.Add([]byte("GET / HTTP/1.0\n\n"), uint8(2))                           // LF only
	f.Add([]byte("\r\n\r\nGET / HTTP/1.1\r\n\r\n"), uint8(4))               // empty lines before the request line
	f.Add([]byte("GET / HTTP/1.1\r\nX: y\r\n\r\r\n"), uint8(5))             // a line of CRs is empty
	f.Add([]byte("GET / HTTP/1.1\r\nHost: do"), uint8(9))                   // cut short
	f.Add([]byte("AVERYLONGMETHODNAMEINDEED / HTTP/1.1\r\n\r\n"), uint8(6)) // method over maxMethod
	f.Add([]byte("GET"), uint8(1))
	f.Add([]byte{}, uint8(0))
	f.Add([]byte{0, 0xff, '\n', '\n', ' ', '\r'}, uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		wantEnd, wantMethod, wantOK := refHead(data)
		var s headScanner
		size := int(piece) + 1
		for i := 0; i < len(data); i += size {
			if s.feed(data[i:min(i+size, len(data))]) {
				break
			}
		}
		if s.done != wantOK || s.end != wantEnd || string(s.method) != wantMethod {
			t.Fatalf("scanner in pieces of %d: done %v, end %d, method %q; want %v, %d, %q", size, s.done, s.end, s.method, wantOK, wantEnd, wantMethod)
		}
		if s.done && (s.n != s.end || data[s.end-1] != '\n') {
			t.Fatalf("scanned %d bytes, head ends at %d with %q", s.n, s.end, data[s.end-1])
		}
		if !s.done && s.n != len(data) {
			t.Fatalf("no end found, but only %d of %d bytes scanned", s.n, len(data))
		}
	})
}
