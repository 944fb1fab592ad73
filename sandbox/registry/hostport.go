package registry

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// dockerHub is the name the policy and the credentials give Docker Hub,
// whichever of its aliases a reference or an entry uses: the one
// go-containerregistry gives references with no registry.
const dockerHub = "index.docker.io"

// dockerHubAliases are the names Docker Hub is known by.
var dockerHubAliases = map[string]bool{
	"docker.io":            true,
	"index.docker.io":      true,
	"registry-1.docker.io": true,
}

// hostPort is a registry's address in canonical form: a lowercase host
// name without a trailing dot, or an IP address (IPv4-mapped IPv6 as
// IPv4), and the port when one was given.
type hostPort struct {
	host string     // the name, or the IP in netip's text form
	ip   netip.Addr // valid when host is an IP literal
	port string     // "" when none was given
}

// String is the canonical HOST[:PORT], IPv6 in brackets.
func (h hostPort) String() string {
	if h.port != "" {
		return net.JoinHostPort(h.host, h.port)
	}
	if h.ip.Is6() {
		return "[" + h.host + "]"
	}
	return h.host
}

// parseHostPort parses HOST[:PORT] (IPv6 in brackets), as a registry is
// named in a reference or an allow-list entry. Docker Hub's aliases without
// a port become index.docker.io.
func parseHostPort(s string) (hostPort, error) {
	switch {
	case s == "":
		return hostPort{}, errors.New("empty: give HOST or HOST:PORT")
	case strings.Contains(s, "://"):
		return hostPort{}, errors.New("a URL: give HOST or HOST:PORT, without a scheme")
	case strings.Contains(s, "/"):
		return hostPort{}, errors.New("has a path: give HOST or HOST:PORT")
	case strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return hostPort{}, errors.New("contains spaces or control characters")
	}
	host, port, bracketed := s, "", false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return hostPort{}, errors.New("an IPv6 address without its closing ']'")
		}
		host, bracketed = s[1:end], true
		switch rest := s[end+1:]; {
		case rest == "":
		case strings.HasPrefix(rest, ":"):
			port = rest[1:]
			if port == "" {
				return hostPort{}, errors.New("an empty port")
			}
		default:
			return hostPort{}, errors.New("text after the IPv6 address's ']': give [ADDRESS] or [ADDRESS]:PORT")
		}
	} else {
		switch strings.Count(s, ":") {
		case 0:
		case 1:
			host, port, _ = strings.Cut(s, ":")
			if port == "" {
				return hostPort{}, errors.New("an empty port")
			}
		default:
			return hostPort{}, errors.New("an IPv6 address must be in brackets, as [::1]:5000")
		}
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 || port[0] == '0' {
			return hostPort{}, errors.New("the port must be a number from 1 to 65535")
		}
	}
	if bracketed {
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() {
			return hostPort{}, errors.New("not an IPv6 address between the brackets")
		}
		if ip.Zone() != "" {
			return hostPort{}, errors.New("an IPv6 zone (%) is not supported")
		}
		ip = ip.Unmap()
		return hostPort{host: ip.String(), ip: ip, port: port}, nil
	}
	host = canonicalName(host)
	if ip, err := netip.ParseAddr(host); err == nil { // "127.0.0.1." too
		ip = ip.Unmap()
		return hostPort{host: ip.String(), ip: ip, port: port}, nil
	}
	if err := checkName(host); err != nil {
		return hostPort{}, err
	}
	if port == "" && dockerHubAliases[host] {
		host = dockerHub
	}
	return hostPort{host: host, port: port}, nil
}

// canonicalName lowercases a host name and drops its trailing dot.
func canonicalName(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

// checkName checks a canonical host name: dot-separated labels of letters,
// digits, '-' and '_', each 1 to 63 long, 253 in all.
func checkName(name string) error {
	if name == "" {
		return errors.New("an empty host name")
	}
	if len(name) > 253 {
		return errors.New("a host name longer than 253 characters")
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("a host name whose labels are not 1 to 63 characters long")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("a host name label that begins or ends with '-'")
		}
		if strings.ContainsFunc(label, func(r rune) bool { return !isNameChar(r) }) {
			return errors.New("a host name with characters other than letters, digits, '-', '_' and '.'")
		}
	}
	return nil
}

// isNameChar tells whether r may be in a canonical host name's label.
func isNameChar(r rune) bool {
	return 'a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-' || r == '_'
}

// class is why an address may not be reached unless listed: "loopback",
// "link-local", "unspecified" or "multicast"; "" for any other.
func (h hostPort) class() string {
	if h.ip.IsValid() {
		return addrClass(h.ip)
	}
	if h.host == "localhost" || strings.HasSuffix(h.host, ".localhost") {
		return "loopback" // RFC 6761: these names are the machine itself
	}
	return ""
}

// thisNetwork is 0.0.0.0/8: a connection to any of it reaches this host on
// Linux, as 0.0.0.0 does.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// addrClass is why ip may not be reached unless listed, or "".
func addrClass(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.IsLinkLocalUnicast():
		return "link-local" // 169.254.169.254, the cloud metadata service, among them
	case ip.IsUnspecified() || ip.Is4() && thisNetwork.Contains(ip):
		return "unspecified"
	case ip.IsMulticast():
		return "multicast"
	}
	return ""
}
