package httpapi

import (
	"context"
	"log/slog"
	"net"
	"strconv"

	"github.com/mdlayher/vsock"
)

// Peer is who is at the other end of a connection, as its transport
// tells: what the audit log says of a caller, and what decides whether a
// request must carry a bearer token.
type Peer struct {
	// Listener is the URL of the listener the connection came in on.
	Listener string
	// Transport is the listener's scheme: "tcp", "unix" or "vsock".
	Transport string
	// Addr is a TCP peer's address.
	Addr string
	// UID, GID and PID are a unix peer's credentials (SO_PEERCRED), -1
	// when the kernel did not say.
	UID, GID, PID int
	// CID is a vsock peer's context id.
	CID uint32
}

type peerKey struct{}

// PeerListener returns ln with each accepted connection labelled with its
// Peer, which ConnContext (set as the http.Server's ConnContext) puts in
// every request's context. A unix peer's credentials are read once, at
// accept.
func PeerListener(ln net.Listener, ep Endpoint) net.Listener {
	return &peerListener{Listener: ln, ep: ep}
}

type peerListener struct {
	net.Listener
	ep Endpoint
}

func (l *peerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	p := Peer{Listener: l.ep.URL, Transport: l.ep.Scheme, UID: -1, GID: -1, PID: -1}
	switch l.ep.Scheme {
	case "tcp":
		p.Addr = c.RemoteAddr().String()
	case "unix":
		p.UID, p.GID, p.PID = peerCred(c)
	case "vsock":
		if a, ok := c.RemoteAddr().(*vsock.Addr); ok {
			p.CID = a.ContextID
		}
	}
	return &peerConn{Conn: c, peer: p}, nil
}

// peerConn is a connection with its Peer. CloseWrite passes through, so
// net/http can still half-close a TCP connection.
type peerConn struct {
	net.Conn
	peer Peer
}

func (c *peerConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ConnContext is the http.Server's ConnContext: it gives the requests of a
// connection accepted by a PeerListener its Peer.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*peerConn); ok {
		return context.WithValue(ctx, peerKey{}, pc.peer)
	}
	return ctx
}

// PeerFrom returns the peer of a request's connection; false when the
// connection did not come through a PeerListener.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// attr is the peer as one log attribute: only what its transport knows.
func (p Peer) attr() slog.Attr {
	switch p.Transport {
	case "tcp":
		return slog.String("peer", p.Addr)
	case "unix":
		return slog.Group("peer", "uid", p.UID, "gid", p.GID, "pid", p.PID)
	case "vsock":
		return slog.Group("peer", "cid", strconv.FormatUint(uint64(p.CID), 10))
	}
	return slog.String("peer", "unknown")
}
