// Package agentaddr reads an agent listener's address as a client gives
// it (unix:///path, tcp://host:port, vsock://CID:PORT) and dials it: one
// reading for the Go SDK and the agent's own probe subcommand, so the VM
// test's probe over vsock checks the SDK's dialer too.
package agentaddr

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mdlayher/vsock"
)

// DialFunc dials the address it was made for; network and addr, which
// http.Transport passes, are ignored.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Parse returns the base URL of requests to addr (http://agent, or
// http://host:port for TCP, so a Host header names it) and the dialer
// that reaches it. An error names addr and says what is wrong.
func Parse(addr string) (string, DialFunc, error) {
	bad := func(why string) error {
		return fmt.Errorf("agent address %q: %s; want unix:///path, tcp://host:port or vsock://CID:PORT", addr, why)
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", nil, bad(err.Error())
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" {
		return "", nil, bad("it has a user, a query or a fragment")
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if u.Host != "" || !filepath.IsAbs(path) || strings.ContainsRune(path, 0) {
			return "", nil, bad("a unix socket needs an absolute path")
		}
		return "http://agent", func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}, nil
	case "tcp":
		if u.Hostname() == "" || u.Port() == "" || u.Path != "" {
			return "", nil, bad("TCP needs a host and a port")
		}
		if _, err := strconv.ParseUint(u.Port(), 10, 16); err != nil {
			return "", nil, bad(fmt.Sprintf("port %q is not a number from 0 to 65535", u.Port()))
		}
		host := u.Host
		return "http://" + host, func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", host)
		}, nil
	case "vsock":
		if u.Hostname() == "" || u.Port() == "" || u.Path != "" {
			return "", nil, bad("vsock needs a CID and a port")
		}
		cid, err := strconv.ParseUint(u.Hostname(), 10, 32)
		if err != nil {
			return "", nil, bad(fmt.Sprintf("CID %q is not a 32-bit number", u.Hostname()))
		}
		port, err := strconv.ParseUint(u.Port(), 10, 32)
		if err != nil || port == 0 {
			return "", nil, bad(fmt.Sprintf("port %q is not a positive 32-bit number", u.Port()))
		}
		return "http://agent", func(ctx context.Context, _, _ string) (net.Conn, error) {
			return vsock.DialContext(ctx, uint32(cid), uint32(port), nil)
		}, nil
	}
	return "", nil, bad(fmt.Sprintf("unknown scheme %q", u.Scheme))
}
