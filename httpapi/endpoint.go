package httpapi

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/mdlayher/vsock"
)

// Endpoint is a listener given as a URL: vsock://[CID]:PORT, unix:///path
// or tcp://HOST:PORT.
type Endpoint struct {
	URL    string // as given
	Scheme string // "vsock", "unix" or "tcp"
	// Address is host:port for tcp and the socket path for unix.
	Address string
	// CID and Port are the vsock address; HasCID is false for any CID.
	CID    uint32
	HasCID bool
	Port   uint32
}

// ParseEndpoint parses a listener URL. A TCP host left empty is loopback:
// the agent listens beyond the machine only when told an address.
func ParseEndpoint(raw string) (Endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Endpoint{}, fmt.Errorf("listener %q: %w", raw, err)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" {
		return Endpoint{}, fmt.Errorf("listener %q: want scheme://address alone, without a user, a query or a fragment", raw)
	}
	ep := Endpoint{URL: raw, Scheme: u.Scheme}
	switch u.Scheme {
	case "tcp":
		host, port := u.Hostname(), u.Port()
		if port == "" || u.Path != "" {
			return Endpoint{}, fmt.Errorf("listener %q: want tcp://HOST:PORT", raw)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return Endpoint{}, fmt.Errorf("listener %q: port %q is not a number from 0 to 65535", raw, port)
		}
		if host != "" && !validHost(host) {
			return Endpoint{}, fmt.Errorf("listener %q: host %q is neither an IP address (IPv6 in brackets) nor a host name", raw, host)
		}
		if host == "" {
			host = "127.0.0.1"
		}
		ep.Address = net.JoinHostPort(host, port)
	case "unix":
		path := u.Path
		if u.Host != "" || !filepath.IsAbs(path) || strings.ContainsRune(path, 0) {
			return Endpoint{}, fmt.Errorf("listener %q: want unix:///absolute/path", raw)
		}
		ep.Address = filepath.Clean(path)
	case "vsock":
		if u.Port() == "" || u.Path != "" {
			return Endpoint{}, fmt.Errorf("listener %q: want vsock://[CID]:PORT", raw)
		}
		port, err := strconv.ParseUint(u.Port(), 10, 32)
		if err != nil || port == 0 {
			return Endpoint{}, fmt.Errorf("listener %q: port %q is not a positive 32-bit number", raw, u.Port())
		}
		ep.Port = uint32(port)
		if h := u.Hostname(); h != "" {
			cid, err := strconv.ParseUint(h, 10, 32)
			if err != nil {
				return Endpoint{}, fmt.Errorf("listener %q: CID %q is not a number", raw, h)
			}
			ep.CID, ep.HasCID = uint32(cid), true
		}
	default:
		return Endpoint{}, fmt.Errorf("listener %q: scheme must be vsock, unix or tcp", raw)
	}
	return ep, nil
}

// validHost reports whether h is an IP address or a DNS name.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		if strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return false
		}
	}
	return len(h) <= 253
}

// errNoVsock says the machine has no vsock support at all, so retrying a
// bind is pointless.
var errNoVsock = errors.New("this machine has no vsock support")

// NoGroup is a SocketGID that names no group: unix sockets are 0600.
const NoGroup = -1

// listen binds the endpoint once; a unix socket is 0600, or 0660 and
// owned by group gid when gid is not NoGroup.
func (ep Endpoint) listen(gid int) (net.Listener, error) {
	switch ep.Scheme {
	case "tcp":
		return net.Listen("tcp", ep.Address)
	case "unix":
		return listenUnix(ep.Address, gid)
	case "vsock":
		var ln *vsock.Listener
		var err error
		if ep.HasCID {
			ln, err = vsock.ListenContextID(ep.CID, ep.Port, nil)
		} else {
			ln, err = vsock.Listen(ep.Port, nil)
		}
		if errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, fmt.Errorf("%w: %w", errNoVsock, err)
		}
		if err != nil {
			return nil, err
		}
		return ln, nil
	}
	return nil, fmt.Errorf("listener %q: unknown scheme", ep.URL)
}

// listenUnix binds a unix socket that only root can connect to (0600, the
// mode it is born with, so no one can connect in between), or else root
// and group gid (0660), replacing a stale socket file left by an earlier
// run but never one a live server answers on, nor a file that is not a
// socket.
func listenUnix(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; not replacing it", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%s: another process is serving on this socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := bindUnix(path)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if gid != NoGroup {
		if err := os.Chown(path, -1, gid); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("give %s to group %d: %w", path, gid, err)
		}
		mode = 0o660
	}
	// Said again after bind: where the mode could not be set before it
	// (not Linux), and for the group's bits.
	if err := os.Chmod(path, mode); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}
