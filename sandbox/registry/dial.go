package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Resolver looks up a host name's addresses; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var _ Resolver = (*net.Resolver)(nil)

// WithResolver returns a copy of p that resolves names with r rather than
// net.DefaultResolver (tests resolve without DNS).
func (p *Policy) WithResolver(r Resolver) *Policy {
	q := *p
	q.resolver = r
	return &q
}

// DialFunc dials a network address, as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// DialContext wraps dial so that every connection is checked against the
// address it goes to: the host is resolved here and its addresses dialled
// one by one, so what was checked is what is reached (no second lookup for
// DNS rebinding to answer differently). A host with any loopback,
// link-local, unspecified or multicast address is refused unless its
// host:port (or that address:port) is listed. nil dial is a net.Dialer's.
func (p *Policy) DialContext(dial DialFunc) DialFunc {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		var ips []netip.Addr
		literal := false
		if ip, err := netip.ParseAddr(host); err == nil {
			ips, literal = []netip.Addr{ip}, true
		} else {
			ips, err = p.resolver.LookupNetIP(ctx, ipNetwork(network), host)
			if err != nil {
				return nil, fmt.Errorf("dial %s: %w", addr, err)
			}
			if len(ips) == 0 {
				return nil, fmt.Errorf("dial %s: no addresses for %s", addr, host)
			}
		}
		for _, ip := range ips {
			class := addrClass(ip)
			if class == "" || p.listedExactly(host, port) || p.listedExactly(ip.Unmap().String(), port) {
				continue
			}
			target := net.JoinHostPort(canonicalName(host), port)
			rule := fmt.Sprintf("%s is %s address, reached only when listed", ip, article(class))
			if !literal {
				rule = fmt.Sprintf("%s resolves to %s, %s address, reached only when listed", canonicalName(host), ip, article(class))
			}
			e := &RefusedError{Registry: target, Rule: rule, Hint: "add --registry " + target + " to allow it"}
			if class == "unspecified" || class == "multicast" {
				e.Hint = ""
			}
			return nil, e
		}
		var errs []error
		for _, ip := range ips {
			c, err := dial(ctx, network, net.JoinHostPort(ip.String(), port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
		return nil, errors.Join(errs...)
	}
}

// ipNetwork is the LookupNetIP network for a dial network.
func ipNetwork(network string) string {
	switch network {
	case "tcp4", "udp4":
		return "ip4"
	case "tcp6", "udp6":
		return "ip6"
	}
	return "ip"
}

// Transport returns a transport for pulls under p: a clone of base (nil:
// go-containerregistry's default transport) whose every connection, to the
// registry, its token server or the blob storage it redirects to, goes
// through DialContext, and which speaks plain HTTP only to listed loopback
// registries (go-containerregistry would also to private addresses). It
// uses no proxy: the policy must see where connections really go.
func (p *Policy) Transport(base *http.Transport) http.RoundTripper {
	if base == nil {
		base, _ = remote.DefaultTransport.(*http.Transport)
	}
	var t *http.Transport
	if base == nil {
		t = http.DefaultTransport.(*http.Transport).Clone()
	} else {
		t = base.Clone()
	}
	t.Proxy = nil
	t.DialContext = p.DialContext(t.DialContext)
	t.DialTLSContext = nil       // TLS goes over DialContext's connections
	t.Dial, t.DialTLS = nil, nil //nolint:staticcheck // cleared so they cannot bypass DialContext
	return &transport{policy: p, inner: t}
}

// transport refuses plain HTTP to all but listed loopback registries.
type transport struct {
	policy *Policy
	inner  http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" {
		host := req.URL.Host
		if req.URL.Port() == "" {
			host = net.JoinHostPort(req.URL.Hostname(), "80")
		}
		if !t.policy.Insecure(host) {
			if req.Body != nil {
				req.Body.Close()
			}
			e := &RefusedError{Registry: host, Rule: "plain HTTP is spoken only to listed loopback registries"}
			if hp, err := parseHostPort(host); err == nil && hp.class() == "loopback" {
				e.Hint = "add --registry " + hp.String() + " to allow it"
			}
			return nil, e
		}
	}
	return t.inner.RoundTrip(req)
}
