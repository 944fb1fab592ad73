package bearer

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

const testToken = "0123456789abcdefghijklmnopqrstuvwxyzABCD"

// TestTokenKeepsADigest: the token is compared as SHA-256 digests, so
// every comparison is of 32 bytes whatever was sent, and the token itself
// is not kept.
func TestTokenKeepsADigest(t *testing.T) {
	a := New(testToken)
	for _, s := range []string{"", "x", testToken[:len(testToken)-1], testToken + "x", strings.ToUpper(testToken)} {
		if a.Matches(s) {
			t.Errorf("%q matched", s)
		}
	}
	if !a.Matches(testToken) {
		t.Error("the token did not match itself")
	}
	if strings.Contains(string(a.want[:]), testToken) {
		t.Error("the token is kept")
	}
	if (Token{}).Matches("") || New("").Set() {
		t.Error("no token matches something")
	}
}

// TestWhereATokenMayBe: one Authorization header, Bearer, the token; never
// in the URL.
func TestWhereATokenMayBe(t *testing.T) {
	a := New(testToken)
	for _, c := range []struct {
		h    http.Header
		want string
	}{
		{http.Header{}, "none"},
		{http.Header{"Authorization": {"Bearer " + testToken}}, ""},
		{http.Header{"Authorization": {"bearer  " + testToken + " "}}, ""},
		{http.Header{"Authorization": {"Basic " + testToken}}, "not a Bearer token"},
		{http.Header{"Authorization": {"Bearer x" + testToken[1:]}}, "wrong bearer token"},
		{http.Header{"Authorization": {"Bearer " + testToken, "Bearer " + testToken}}, "more than one"},
	} {
		if got := a.Refusal(c.h, "none"); (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%v: %q, want %q", c.h, got, c.want)
		}
	}
	for q, want := range map[string]bool{
		"a=1": false, "x=" + testToken: true, testToken + "=1": true, "access_token=x": true, "Token=x": true,
	} {
		v, _ := url.ParseQuery(q)
		if a.InURL(v, true) != want {
			t.Errorf("%q: in the URL %v, want %v", q, !want, want)
		}
	}
	if v, _ := url.ParseQuery("access_token=x"); a.InURL(v, false) {
		t.Error("access_token=x with a value that is no token, where names do not count")
	}
}

// BenchmarkCompare times the comparison alone, where a timing difference
// would show most.
func BenchmarkCompare(b *testing.B) {
	a := New(testToken)
	for _, bc := range []struct{ name, token string }{
		{"right", testToken},
		{"wrong-first-byte", "x" + testToken[1:]},
		{"wrong-last-byte", testToken[:len(testToken)-1] + "x"},
		{"wrong-length", testToken + testToken},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				a.Matches(bc.token)
			}
		})
	}
}
