// Package registry decides which registries images may be pulled from, and
// with which credentials: an allow-list checked by name before a pull and
// by address at every connection the pull makes, and Docker config.json
// or per-create credentials that never print their secrets.
package registry

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// ErrRefused is wrapped by every refusal of the policy, by name or at a
// connection, so a caller can tell a refused image from a failed pull.
var ErrRefused = errors.New("registry refused by policy")

// RefusedError says which registry or address was refused, by which rule,
// and how an operator allows it.
type RefusedError struct {
	Registry string // the registry, or the host:port a connection was for
	Rule     string // why it was refused
	Hint     string // how to allow it; "" when it cannot be
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("registry %q refused: %s", e.Registry, e.Rule)
	if e.Hint != "" {
		msg += "; " + e.Hint
	}
	return msg
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Policy is the registries images may come from (--registry). With an
// allow-list only the listed registries are allowed; without one any is,
// except those on loopback, link-local, unspecified and multicast
// addresses and the name localhost. Such addresses are reached only when
// listed with their port, however a pull comes to them (a name that
// resolves to one, a redirect). A Policy is safe for concurrent use.
type Policy struct {
	allowed  []string        // canonical entries, as given order
	listed   map[string]bool // canonical HOST[:PORT] of each entry
	resolver Resolver
}

// NewPolicy makes the policy of an allow-list of HOST or HOST:PORT entries
// (IPv6 in brackets); an empty list allows any registry but the machine's
// own and link-local ones. An entry without a port matches references
// without one (the registry's default port). A loopback or link-local
// registry must be listed with its port; an unspecified or multicast
// address cannot be listed.
func NewPolicy(allowed []string) (*Policy, error) {
	p := &Policy{listed: map[string]bool{}, resolver: net.DefaultResolver}
	for _, s := range allowed {
		hp, err := parseEntry(s)
		if err != nil {
			return nil, err
		}
		key := hp.String()
		if !p.listed[key] {
			p.listed[key] = true
			p.allowed = append(p.allowed, key)
		}
	}
	return p, nil
}

// parseEntry parses one allow-list entry, with an error naming it.
func parseEntry(s string) (hostPort, error) {
	hp, err := parseHostPort(s)
	if err != nil {
		return hostPort{}, fmt.Errorf("--registry %q: %w", s, err)
	}
	switch class := hp.class(); class {
	case "unspecified", "multicast":
		return hostPort{}, fmt.Errorf("--registry %q: %s is %s address: no registry can be there", s, hp.host, article(class))
	case "loopback", "link-local":
		if hp.port == "" {
			return hostPort{}, fmt.Errorf("--registry %q: %s is %s address: list it with its port, as %s:PORT", s, hp.host, article(class), hp)
		}
	}
	return hp, nil
}

func article(class string) string {
	if class == "unspecified" {
		return "an unspecified"
	}
	return "a " + class
}

// Allowed is the allow-list in canonical form; empty when any registry
// but the machine's own may be used.
func (p *Policy) Allowed() []string { return slices.Clone(p.allowed) }

// Check tells whether images may be pulled from ref's registry, by its
// name alone, before any connection. A refusal is a *RefusedError wrapping
// ErrRefused.
func (p *Policy) Check(ref name.Reference) error {
	return p.CheckRegistry(ref.Context().RegistryStr())
}

// CheckRegistry is Check for a registry's HOST[:PORT], as a reference
// names it.
func (p *Policy) CheckRegistry(reg string) error {
	hp, err := parseHostPort(reg)
	if err != nil {
		return &RefusedError{Registry: reg, Rule: "not a registry name: " + err.Error()}
	}
	key := hp.String()
	if len(p.listed) > 0 && p.listed[key] {
		return nil
	}
	e := &RefusedError{Registry: key, Hint: allowHint(hp)}
	class := hp.class()
	switch {
	case class == "unspecified" || class == "multicast":
		e.Rule, e.Hint = fmt.Sprintf("%s is %s address", hp.host, article(class)), ""
	case len(p.listed) > 0:
		e.Rule = "not in the allow-list (--registry " + strings.Join(p.allowed, ", ") + ")"
	case class != "":
		e.Rule = fmt.Sprintf("%s is %s address, refused unless listed", hp.host, article(class))
	default:
		return nil
	}
	return e
}

// allowHint says how an operator allows a registry.
func allowHint(hp hostPort) string {
	if hp.port == "" && hp.class() != "" {
		return "list it with its port (--registry " + hp.String() + ":PORT) and name that port in the image"
	}
	return "add --registry " + hp.String() + " to allow it"
}

// Insecure tells whether reg may be spoken to in plain HTTP: only a listed
// loopback registry may, since nothing but the machine is on that path.
func (p *Policy) Insecure(reg string) bool {
	hp, err := parseHostPort(reg)
	return err == nil && hp.port != "" && hp.class() == "loopback" && p.listed[hp.String()]
}

// listedExactly tells whether host:port is listed as such: the only way a
// connection to a loopback or link-local address is allowed.
func (p *Policy) listedExactly(host, port string) bool {
	hp, err := parseHostPort(net.JoinHostPort(host, port))
	return err == nil && p.listed[hp.String()]
}
