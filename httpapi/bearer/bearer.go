// Package bearer checks bearer tokens, for the control API and the Docker
// proxy alike: the one rule for where a token may be and how it is
// compared.
package bearer

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"net/url"
	"strings"
)

// Challenge is the WWW-Authenticate of every 401.
const Challenge = `Bearer realm="arcbox-agent"`

// InURLRefusal is why a request with the token in its URL is refused,
// right header or not: so that a token never reaches a log.
const InURLRefusal = "a token in the URL never authenticates; send it in a header: Authorization: Bearer <token>"

// Token is a bearer token to check requests against. It keeps only the
// token's SHA-256: digests of equal length are compared in constant time,
// so neither the token's bytes nor its length leak through timing. The
// zero Token is none.
type Token struct {
	set  bool
	want [sha256.Size]byte
}

// New is the Token token; "" is none.
func New(token string) Token {
	if token == "" {
		return Token{}
	}
	return Token{set: true, want: sha256.Sum256([]byte(token))}
}

// Set reports whether there is a token to check.
func (t Token) Set() bool { return t.set }

// Matches reports whether s is the token.
func (t Token) Matches(s string) bool {
	got := sha256.Sum256([]byte(s))
	return t.set && subtle.ConstantTimeCompare(got[:], t.want[:]) == 1
}

// InURL reports whether q carries the token, as a key or a value, or, with
// named, a parameter named access_token or token (RFC 6750's and the
// common name) whatever its value.
func (t Token) InURL(q url.Values, named bool) bool {
	for k, vs := range q {
		if named && (strings.EqualFold(k, "access_token") || strings.EqualFold(k, "token")) {
			return true
		}
		if t.Matches(k) {
			return true
		}
		for _, v := range vs {
			if t.Matches(v) {
				return true
			}
		}
	}
	return false
}

// Refusal says why headers h do not carry the token, "" when they do:
// exactly one Authorization header, of the Bearer scheme, with the token.
// noHeader is the answer when there is no Authorization header at all,
// which is where a caller says how to send one.
func (t Token) Refusal(h http.Header, noHeader string) string {
	values := h.Values("Authorization")
	switch {
	case len(values) == 0:
		return noHeader
	case len(values) > 1:
		return "more than one Authorization header; send one: Authorization: Bearer <token>"
	}
	scheme, token, _ := strings.Cut(values[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "the Authorization header is not a Bearer token; want Authorization: Bearer <token>"
	}
	if !t.Matches(strings.TrimSpace(token)) {
		return "wrong bearer token"
	}
	return ""
}
