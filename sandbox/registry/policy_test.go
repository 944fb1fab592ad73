package registry

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

func TestParseHostPort(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ghcr.io", "ghcr.io"},
		{"GHCR.io.", "ghcr.io"},
		{"127.0.0.1.:5000", "127.0.0.1:5000"},
		{"registry.example.com:5000", "registry.example.com:5000"},
		{"docker.io", "index.docker.io"},
		{"index.docker.io", "index.docker.io"},
		{"registry-1.docker.io", "index.docker.io"},
		{"docker.io:443", "docker.io:443"},
		{"127.0.0.1:5000", "127.0.0.1:5000"},
		{"[::1]:5000", "[::1]:5000"},
		{"[0:0::1]:5000", "[::1]:5000"},
		{"[::ffff:127.0.0.1]:5000", "127.0.0.1:5000"},
		{"[2001:db8::1]", "[2001:db8::1]"},
		{"localhost:65535", "localhost:65535"},
		{"my_reg.internal", "my_reg.internal"},
	} {
		hp, err := parseHostPort(tc.in)
		if err != nil {
			t.Errorf("parseHostPort(%q): %v", tc.in, err)
			continue
		}
		if got := hp.String(); got != tc.want {
			t.Errorf("parseHostPort(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNewPolicyRefusesBadEntries(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "empty"},
		{"https://ghcr.io", "a URL"},
		{"ghcr.io/org", "path"},
		{"ghcr.io ", "spaces"},
		{"::1", "brackets"},
		{"[::1", "closing"},
		{"[::1]x", "after"},
		{"[127.0.0.1]:5000", "IPv6"},
		{"[fe80::1%eth0]:5000", "zone"},
		{"ghcr.io:", "empty port"},
		{"ghcr.io:0", "1 to 65535"},
		{"ghcr.io:65536", "1 to 65535"},
		{"ghcr.io:080", "1 to 65535"},
		{"ghcr.io:+80", "1 to 65535"},
		{"gh cr.io", "spaces"},
		{"-ghcr.io", "'-'"},
		{"ghcr..io", "labels"},
		{"gh*cr.io", "characters"},
		{strings.Repeat("a", 64) + ".io", "labels"},
		{"127.0.0.1", "with its port"},
		{"localhost", "with its port"},
		{"foo.localhost", "with its port"},
		{"[::1]", "with its port"},
		{"169.254.169.254", "with its port"},
		{"0.0.0.0:5000", "unspecified"},
		{"[::]:5000", "unspecified"},
		{"224.0.0.1:5000", "multicast"},
	} {
		_, err := NewPolicy([]string{"ghcr.io", tc.in})
		if err == nil {
			t.Errorf("NewPolicy(%q) accepted it", tc.in)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `--registry "`+tc.in+`"`) {
			t.Errorf("NewPolicy(%q) = %q, want an error naming the entry and saying %q", tc.in, err, tc.want)
		}
	}
}

func mustPolicy(t *testing.T, allowed ...string) *Policy {
	t.Helper()
	p, err := NewPolicy(allowed)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func checkRef(t *testing.T, p *Policy, ref string) error {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatalf("parse %q: %v", ref, err)
	}
	return p.Check(r)
}

func TestCheckWithoutAllowList(t *testing.T) {
	p := mustPolicy(t)
	for _, ref := range []string{
		"busybox", "docker.io/library/busybox:1", "ghcr.io/org/img@sha256:" + strings.Repeat("a", 64),
		"registry.example.com:5000/x", "10.0.0.5:5000/x", "[2001:db8::1]:5000/x",
	} {
		if err := checkRef(t, p, ref); err != nil {
			t.Errorf("Check(%q) = %v, want allowed", ref, err)
		}
	}
	for _, tc := range []struct{ ref, rule, hint string }{
		{"127.0.0.1:5000/x", "loopback", "--registry 127.0.0.1:5000"},
		{"127.1.2.3:5000/x", "loopback", "--registry 127.1.2.3:5000"},
		{"[::1]:5000/x", "loopback", "--registry [::1]:5000"},
		{"localhost:5000/x", "loopback", "--registry localhost:5000"},
		{"LocalHost:5000/x", "loopback", "--registry localhost:5000"},
		{"localhost/x", "loopback", "--registry localhost:PORT"},
		{"a.localhost:5000/x", "loopback", "--registry a.localhost:5000"},
		{"169.254.169.254/x", "link-local", "--registry 169.254.169.254:PORT"},
		{"169.254.169.254:80/x", "link-local", "--registry 169.254.169.254:80"},
		{"[fe80::1]:5000/x", "link-local", "--registry [fe80::1]:5000"},
		{"[::ffff:127.0.0.1]:5000/x", "loopback", "--registry 127.0.0.1:5000"},
		{"127.0.0.1.:5000/x", "loopback", "--registry 127.0.0.1:5000"},
		{"0.0.0.0:5000/x", "unspecified", ""},
		{"0.1.2.3:5000/x", "unspecified", ""},
		{"[::]:5000/x", "unspecified", ""},
		{"239.1.1.1:5000/x", "multicast", ""},
	} {
		err := checkRef(t, p, tc.ref)
		var re *RefusedError
		if !errors.Is(err, ErrRefused) || !errors.As(err, &re) {
			t.Errorf("Check(%q) = %v, want a refusal", tc.ref, err)
			continue
		}
		if !strings.Contains(re.Rule, tc.rule) || !strings.Contains(re.Hint, tc.hint) || (tc.hint == "") != (re.Hint == "") {
			t.Errorf("Check(%q) = %q, want rule %q and hint %q", tc.ref, err, tc.rule, tc.hint)
		}
	}
}

func TestCheckWithAllowList(t *testing.T) {
	p := mustPolicy(t, "ghcr.io", "docker.io", "127.0.0.1:5000", "[::1]:5001", "localhost:5002", "169.254.10.10:80", "10.0.0.5:5000")
	for _, ref := range []string{
		"busybox", "index.docker.io/library/busybox", "registry-1.docker.io/library/busybox", "ghcr.io/a/b",
		"127.0.0.1:5000/x", "[::1]:5001/x", "localhost:5002/x", "169.254.10.10:80/x", "10.0.0.5:5000/x",
	} {
		if err := checkRef(t, p, ref); err != nil {
			t.Errorf("Check(%q) = %v, want allowed", ref, err)
		}
	}
	for _, tc := range []struct{ ref, hint string }{
		{"quay.io/x", "add --registry quay.io to allow it"},
		{"ghcr.io:443/x", "add --registry ghcr.io:443"},
		{"127.0.0.1:5001/x", "add --registry 127.0.0.1:5001"},
		{"localhost:5000/x", "add --registry localhost:5000"},
		{"localhost/x", "--registry localhost:PORT"},
		{"10.0.0.5/x", "add --registry 10.0.0.5 "},
	} {
		err := checkRef(t, p, tc.ref)
		if !errors.Is(err, ErrRefused) {
			t.Errorf("Check(%q) = %v, want a refusal", tc.ref, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "not in the allow-list") || !strings.Contains(msg, tc.hint) || !strings.Contains(msg, "ghcr.io, index.docker.io") {
			t.Errorf("Check(%q) = %q, want the rule, the list and %q", tc.ref, msg, tc.hint)
		}
	}
	if got, want := strings.Join(p.Allowed(), " "), "ghcr.io index.docker.io 127.0.0.1:5000 [::1]:5001 localhost:5002 169.254.10.10:80 10.0.0.5:5000"; got != want {
		t.Errorf("Allowed() = %q, want %q", got, want)
	}
}

func TestInsecure(t *testing.T) {
	p := mustPolicy(t, "127.0.0.1:5000", "[::1]:5001", "localhost:5002", "169.254.10.10:80", "10.0.0.5:5000", "ghcr.io")
	for reg, want := range map[string]bool{
		"127.0.0.1:5000":      true,
		"[::1]:5001":          true,
		"localhost:5002":      true,
		"LOCALHOST:5002":      true,
		"127.0.0.1:5001":      false, // not listed
		"127.0.0.1":           false,
		"169.254.10.10:80":    false, // listed, but not the machine itself
		"10.0.0.5:5000":       false,
		"ghcr.io":             false,
		"not a registry name": false,
	} {
		if got := p.Insecure(reg); got != want {
			t.Errorf("Insecure(%q) = %v, want %v", reg, got, want)
		}
	}
	if mustPolicy(t).Insecure("127.0.0.1:5000") {
		t.Error("an empty allow-list lets a loopback registry be spoken to in plain HTTP")
	}
}
