package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/arcbox/arcbox-agent/httpapi/bearer"
)

// MinTokenLength is the shortest bearer token the agent accepts: 32
// characters, such as 24 random bytes in base64.
const MinTokenLength = 32

// ReadTokenFile reads the bearer token from path: the file's content with
// the white space around it trimmed. It refuses a file that group or
// others may read or write, and a token that is shorter than
// MinTokenLength or holds anything but printable ASCII. No error
// carries the token.
func ReadTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("auth token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("auth token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("auth token file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("auth token file %s has mode %04o: group or others may read it; chmod 600 it", path, perm)
	}
	const maxTokenFile = 4096
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("auth token file %s: %w", path, err)
	}
	if len(data) > maxTokenFile {
		return "", fmt.Errorf("auth token file %s is over %d bytes; want one token", path, maxTokenFile)
	}
	token := strings.TrimSpace(string(data))
	if len(token) < MinTokenLength {
		return "", fmt.Errorf("auth token file %s holds a token of %d characters; want at least %d (e.g. head -c 32 /dev/urandom | base64)",
			path, len(token), MinTokenLength)
	}
	for _, c := range []byte(token) {
		if c <= ' ' || c > '~' {
			return "", fmt.Errorf("auth token file %s: the token holds a space or a character that is not printable ASCII", path)
		}
	}
	return token, nil
}

// Auth is how a request was let in, for the audit log.
type Auth string

const (
	// AuthBearer is a right bearer token.
	AuthBearer Auth = "bearer"
	// AuthUnixSocket is a unix socket, which its file mode guards.
	AuthUnixSocket Auth = "unix-socket"
	// AuthVsockCID is a vsock connection from an allowed CID.
	AuthVsockCID Auth = "vsock-cid"
	// AuthNone is a TCP listener with no token configured (loopback,
	// --insecure-loopback).
	AuthNone Auth = "none"
	// AuthRefused is a request answered 401.
	AuthRefused Auth = "refused"
)

// check decides a request: how it is let in, or why it is refused. A
// token in the URL is refused wherever it is, so that it never reaches a
// log; unix sockets and vsock need no token; everything else (TCP, or a
// connection of unknown transport) needs the right bearer token.
func check(token bearer.Token, r *http.Request) (Auth, string) {
	peer, _ := PeerFrom(r.Context())
	if !token.Set() {
		return transportAuth(peer.Transport, AuthNone), ""
	}
	needsToken := peer.Transport != "unix" && peer.Transport != "vsock"
	if r.URL.RawQuery != "" && token.InURL(r.URL.Query(), needsToken) {
		return AuthRefused, bearer.InURLRefusal
	}
	if !needsToken {
		return transportAuth(peer.Transport, AuthNone), ""
	}
	if why := token.Refusal(r.Header, "no Authorization header; this listener wants Authorization: Bearer <token>"); why != "" {
		return AuthRefused, why
	}
	return AuthBearer, ""
}

func transportAuth(transport string, otherwise Auth) Auth {
	switch transport {
	case "unix":
		return AuthUnixSocket
	case "vsock":
		return AuthVsockCID
	}
	return otherwise
}

// authenticate answers 401 to a request check refuses, in the API's error
// shape with a Bearer challenge, and tells the audit line how each was let
// in.
func authenticate(token bearer.Token) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			auth, refusal := check(token, r)
			if q := requestOf(r.Context()); q != nil {
				q.auth = auth // for the audit line
			}
			if auth == AuthRefused {
				w.Header().Set("WWW-Authenticate", bearer.Challenge)
				WriteError(w, http.StatusUnauthorized, refusal)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
