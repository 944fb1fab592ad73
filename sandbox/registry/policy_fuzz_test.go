package registry

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseEntry parses arbitrary allow-list entries: an entry is accepted
// or refused with an error naming it, never a panic; an accepted entry's
// canonical form parses back to itself, is allowed by its own policy, and
// a loopback or link-local one always carries its port.
func FuzzParseEntry(f *testing.F) {
	for _, s := range []string{
		"ghcr.io", "GHCR.IO.", "docker.io", "registry-1.docker.io:443", "127.0.0.1:5000", "127.0.0.1",
		"[::1]:5000", "[::ffff:127.0.0.1]:80", "[fe80::1%eth0]:1", "::1", "[::1", "localhost:1", "a.localhost",
		"169.254.169.254:80", "0.0.0.0:1", "224.0.0.1:1", "host:0", "host:65536", "host:080", "https://h", "h/p",
		"my_reg-1.example.com:65535", "-bad.io", "a..b", "", " ", "\x00", "é.example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hp, err := parseEntry(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--registry ") {
				t.Fatalf("parseEntry(%q): error %q does not name the entry", s, err)
			}
			return
		}
		canon := hp.String()
		again, err := parseEntry(canon)
		if err != nil || again.String() != canon {
			t.Fatalf("parseEntry(%q) = %q, which parses to %q, %v", s, canon, again.String(), err)
		}
		if strings.ContainsAny(canon, "/ \t\r\n") {
			t.Fatalf("parseEntry(%q) = %q: not a bare HOST[:PORT]", s, canon)
		}
		if c := hp.class(); (c == "loopback" || c == "link-local") && hp.port == "" {
			t.Fatalf("parseEntry(%q) = %q: a %s registry without its port", s, canon, c)
		}
		p, err := NewPolicy([]string{s})
		if err != nil {
			t.Fatalf("NewPolicy(%q): %v, though parseEntry accepted it", s, err)
		}
		if err := p.CheckRegistry(canon); err != nil {
			t.Fatalf("the policy of %q refuses %q: %v", s, canon, err)
		}
		if err := p.CheckRegistry(canon + ".other"); err != nil && !errors.Is(err, ErrRefused) {
			t.Fatalf("a refusal that is not ErrRefused: %v", err)
		}
	})
}
