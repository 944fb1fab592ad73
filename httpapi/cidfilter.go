package httpapi

import (
	"log/slog"
	"net"

	"github.com/mdlayher/vsock"
	"github.com/prometheus/client_golang/prometheus"
)

// HostCID is the vsock context id of the host.
const HostCID = 2

// cidFilter accepts vsock peers whose CID is allowed and closes the others,
// logging and counting each refusal.
type cidFilter struct {
	net.Listener
	allowed map[uint32]bool
	name    string
	logger  *slog.Logger
	refused prometheus.Counter
}

func (l *cidFilter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr, ok := c.RemoteAddr().(*vsock.Addr)
		if ok && l.allowed[addr.ContextID] {
			return c, nil
		}
		l.refused.Inc()
		l.logger.Warn("refused vsock peer: its CID is not allowed (see --allow-cid)",
			"listener", l.name, "peer", c.RemoteAddr().String())
		_ = c.Close()
	}
}
