package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

// MinTokenLength is the shortest bearer token the agent accepts: 32
// characters, such as 24 random bytes in base64.
const MinTokenLength = 32

// authRealm is the challenge of every 401.
const authRealm = `Bearer realm="arcbox-agent"`

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

type authKey struct{}

// authState is set by authenticate for audit to read once the request
// is done.
type authState struct{ auth Auth }

// authenticator checks bearer tokens. It keeps only the token's SHA-256:
// digests of equal length are compared in constant time, so neither the
// token's bytes nor its length leak through timing.
type authenticator struct {
	enabled bool
	want    [sha256.Size]byte
}

func newAuthenticator(token string) *authenticator {
	if token == "" {
		return &authenticator{}
	}
	return &authenticator{enabled: true, want: sha256.Sum256([]byte(token))}
}

func (a *authenticator) matches(s string) bool {
	got := sha256.Sum256([]byte(s))
	return subtle.ConstantTimeCompare(got[:], a.want[:]) == 1
}

// check decides a request: how it is let in, or why it is refused. A
// token in the URL is refused wherever it is, so that it never reaches a
// log; unix sockets and vsock need no token; everything else (TCP, or a
// connection of unknown transport) needs the right bearer token.
func (a *authenticator) check(r *http.Request) (Auth, string) {
	peer, _ := PeerFrom(r.Context())
	if !a.enabled {
		return transportAuth(peer.Transport, AuthNone), ""
	}
	needsToken := peer.Transport != "unix" && peer.Transport != "vsock"
	if a.tokenInQuery(r, needsToken) {
		return AuthRefused, "a token in the URL never authenticates; send it in a header: Authorization: Bearer <token>"
	}
	if !needsToken {
		return transportAuth(peer.Transport, AuthNone), ""
	}
	values := r.Header.Values("Authorization")
	switch {
	case len(values) == 0:
		return AuthRefused, "no Authorization header; this listener wants Authorization: Bearer <token>"
	case len(values) > 1:
		return AuthRefused, "more than one Authorization header; send one: Authorization: Bearer <token>"
	}
	scheme, token, _ := strings.Cut(values[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return AuthRefused, "the Authorization header is not a Bearer token; want Authorization: Bearer <token>"
	}
	if !a.matches(strings.TrimSpace(token)) {
		return AuthRefused, "wrong bearer token"
	}
	return AuthBearer, ""
}

// tokenInQuery reports whether the query carries the token, as a key or a
// value, or, where a token is needed, a parameter named access_token or
// token (RFC 6750's and the common name).
func (a *authenticator) tokenInQuery(r *http.Request, needsToken bool) bool {
	if r.URL.RawQuery == "" {
		return false
	}
	for k, vs := range r.URL.Query() {
		if needsToken && (k == "access_token" || k == "token") {
			return true
		}
		if a.matches(k) {
			return true
		}
		for _, v := range vs {
			if a.matches(v) {
				return true
			}
		}
	}
	return false
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
// shape with a Bearer challenge, and tells audit how each was let in.
func authenticate(a *authenticator) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			auth, refusal := a.check(r)
			if st, ok := r.Context().Value(authKey{}).(*authState); ok {
				st.auth = auth
			}
			if auth == AuthRefused {
				w.Header().Set("WWW-Authenticate", authRealm)
				WriteError(w, http.StatusUnauthorized, refusal)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// withAuthState gives audit a place to learn how a request was let in.
func withAuthState(ctx context.Context) (context.Context, *authState) {
	st := &authState{}
	return context.WithValue(ctx, authKey{}, st), st
}
