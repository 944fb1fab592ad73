package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// fakeResolver answers from a table: no DNS in tests.
type fakeResolver map[string][]string

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	addrs, ok := f[canonicalName(host)] // DNS names are caseless
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var ips []netip.Addr
	for _, a := range addrs {
		ips = append(ips, netip.MustParseAddr(a))
	}
	return ips, nil
}

// guard is the dialer under the policy in tests: it dials loopback only,
// so a refusal the policy missed fails the test instead of sending a
// packet off the machine, and it records what it was asked to dial.
type guard struct {
	t      *testing.T
	mu     sync.Mutex
	dialed []string
}

func (g *guard) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	g.mu.Lock()
	g.dialed = append(g.dialed, addr)
	g.mu.Unlock()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		g.t.Errorf("the policy let a dial of %s through to the dialer", addr)
		return nil, fmt.Errorf("test guard: %s is not loopback", addr)
	}
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func (g *guard) transport() *http.Transport {
	return &http.Transport{DialContext: g.dial, ForceAttemptHTTP2: true}
}

func (g *guard) calls() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.dialed...)
}

func TestDialRefusesSpecialAddresses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	res := fakeResolver{
		"evil.test":      {"127.0.0.1"},
		"mixed.test":     {"203.0.113.7", "127.0.0.1"},
		"meta.test":      {"169.254.169.254"},
		"mapped.test":    {"::ffff:127.0.0.1"},
		"zero.test":      {"0.0.0.0"},
		"v6.test":        {"::1"},
		"listed.test":    {"127.0.0.1"},
		"localhost":      {"127.0.0.1"},
		"ll6.test":       {"fe80::1"},
		"multicast.test": {"224.0.0.251"},
	}
	p := mustPolicy(t, "listed.test:"+port).WithResolver(res)
	g := &guard{t: t}
	dial := p.DialContext(g.dial)
	ctx := context.Background()
	for _, tc := range []struct{ addr, want string }{
		{"evil.test:" + port, "evil.test resolves to 127.0.0.1, a loopback address"},
		{"EVIL.test.:" + port, "evil.test resolves to 127.0.0.1, a loopback address"},
		{"mixed.test:443", "mixed.test resolves to 127.0.0.1, a loopback address"},
		{"meta.test:80", "meta.test resolves to 169.254.169.254, a link-local address"},
		{"169.254.169.254:80", "169.254.169.254 is a link-local address"},
		{"mapped.test:" + port, "resolves to ::ffff:127.0.0.1, a loopback address"},
		{"zero.test:" + port, "0.0.0.0, an unspecified address"},
		{"0.0.0.0:" + port, "an unspecified address"},
		{"v6.test:" + port, "::1, a loopback address"},
		{"[::1]:" + port, "::1 is a loopback address"},
		{"127.0.0.1:" + port, "127.0.0.1 is a loopback address"},
		{"localhost:" + port, "localhost resolves to 127.0.0.1"},
		{"listed.test:1", "listed.test resolves to 127.0.0.1"}, // listed with another port
		{"ll6.test:443", "a link-local address"},
		{"multicast.test:443", "a multicast address"},
	} {
		c, err := dial(ctx, "tcp", tc.addr)
		if err == nil {
			c.Close()
			t.Errorf("dial %s: connected, want a refusal", tc.addr)
			continue
		}
		var re *RefusedError
		if !errors.Is(err, ErrRefused) || !errors.As(err, &re) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dial %s = %v, want a refusal saying %q", tc.addr, err, tc.want)
		}
	}
	if got := g.calls(); len(got) != 0 {
		t.Errorf("refused addresses reached the dialer: %v", got)
	}

	// Listed exactly, by name, or by the address and port it resolves to:
	// allowed.
	byAddr := mustPolicy(t, "127.0.0.1:"+port).WithResolver(res).DialContext(g.dial)
	for _, d := range []struct {
		dial DialFunc
		addr string
	}{{dial, "listed.test:" + port}, {byAddr, "evil.test:" + port}, {byAddr, "127.0.0.1:" + port}} {
		c, err := d.dial(ctx, "tcp", d.addr)
		if err != nil {
			t.Errorf("dial %s (listed): %v", d.addr, err)
			continue
		}
		c.Close()
	}
	// A name is dialled at the address that was checked.
	if got, want := g.calls(), []string{"127.0.0.1:" + port, "127.0.0.1:" + port, "127.0.0.1:" + port}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("dialled %v, want %v", got, want)
	}
	// A name that does not resolve is an error, not a refusal.
	if _, err := dial(ctx, "tcp", "nowhere.test:443"); err == nil || errors.Is(err, ErrRefused) {
		t.Errorf("dial of an unknown name = %v, want a resolution error", err)
	}
}

// TestTransportRefusesRedirects follows redirects from a listed loopback
// server to places the policy refuses: each is refused at its connection.
func TestTransportRefusesRedirects(t *testing.T) {
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		t.Error("a refused redirect reached the unlisted server")
	}))
	defer other.Close()
	otherURL, _ := url.Parse(other.URL)
	var target string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/here" {
			fmt.Fprint(w, "ok")
			return
		}
		http.Redirect(w, req, target, http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	srvURL, _ := url.Parse(srv.URL)
	res := fakeResolver{"blobs.test": {"127.0.0.1"}, "meta.test": {"169.254.169.254"}, "localhost": {"127.0.0.1"}}
	p := mustPolicy(t, srvURL.Host).WithResolver(res)
	g := &guard{t: t}
	client := &http.Client{Transport: p.Transport(g.transport())}

	target = srv.URL + "/here" // to the listed server itself: followed
	resp, err := client.Get(srv.URL + "/redirect")
	if err != nil {
		t.Fatalf("redirect to the listed server: %v", err)
	}
	resp.Body.Close()

	for _, tc := range []struct{ target, want string }{
		{other.URL + "/blob", "plain HTTP is spoken only to listed loopback registries; add --registry " + otherURL.Host},
		{"https://" + otherURL.Host + "/blob", "127.0.0.1 is a loopback address, reached only when listed; add --registry " + otherURL.Host},
		{"https://blobs.test:" + otherURL.Port() + "/blob", "blobs.test resolves to 127.0.0.1, a loopback address"},
		{"https://localhost:" + otherURL.Port() + "/blob", "resolves to"},
		{"http://169.254.169.254/latest/meta-data/", `"169.254.169.254:80" refused: plain HTTP`},
		{"https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"},
		{"https://meta.test/latest/meta-data/", "meta.test resolves to 169.254.169.254"},
	} {
		target = tc.target
		resp, err := client.Get(srv.URL + "/redirect")
		if err == nil {
			resp.Body.Close()
			t.Errorf("redirect to %s: followed, want a refusal", tc.target)
			continue
		}
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("redirect to %s = %v, want a refusal saying %q", tc.target, err, tc.want)
		}
	}
	for _, a := range g.calls() {
		if a != srvURL.Host {
			t.Errorf("dialled %s: only the listed server should be", a)
		}
	}
}

// TestTransportPlainHTTP: go-containerregistry falls back to plain HTTP for
// private addresses and localhost names by itself; the transport allows it
// only to listed loopback registries, refused before any connection.
func TestTransportPlainHTTP(t *testing.T) {
	p := mustPolicy(t, "10.0.0.5:5000", "127.0.0.1:5000", "ghcr.io")
	g := &guard{t: t}
	client := &http.Client{Transport: p.Transport(g.transport())}
	for _, u := range []string{"http://10.0.0.5:5000/v2/", "http://ghcr.io/v2/", "http://192.168.1.1/v2/", "http://127.0.0.1:5001/v2/", "http://localhost/v2/"} {
		resp, err := client.Get(u)
		if err == nil {
			resp.Body.Close()
			t.Errorf("GET %s: answered, want a refusal", u)
			continue
		}
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "plain HTTP is spoken only to listed loopback registries") {
			t.Errorf("GET %s = %v, want a plain-HTTP refusal", u, err)
		}
	}
	if got := g.calls(); len(got) != 0 {
		t.Errorf("refused requests reached the dialer: %v", got)
	}
}
