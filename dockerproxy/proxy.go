// Package dockerproxy joins connections from the host, byte for byte, to
// dockerd's unix socket: both directions, half-close passed through, so
// that attach, run -i, exec and logs -f work as on the socket itself.
// While dockerd cannot be reached, it answers each request with a 502 in
// dockerd's own error shape. With a token, a TCP connection must open with
// a request that carries it as a bearer token, or it gets a 401.
package dockerproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/arcbox/arcbox-agent/httpapi/bearer"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultDialTimeout bounds the connect to dockerd's socket when
// Config.DialTimeout is zero.
const DefaultDialTimeout = 5 * time.Second

// copyBufferSize is the size of the pooled buffers of the copy loop; a
// read that fills one marks a bulk transfer, handed over to splice(2).
const copyBufferSize = 64 << 10

// socketBufferSize is asked of both sockets of a proxied connection, in
// both directions. A bulk transfer then runs as fast through the proxy as
// straight to the socket; the kernel caps it (net.core.[rw]mem_max) and
// charges only what is queued.
const socketBufferSize = 4 << 20

// Config configures a Proxy.
type Config struct {
	// Socket is dockerd's unix socket. Required.
	Socket string
	// Logger receives the proxy's logs. Default: discarded.
	Logger *slog.Logger
	// Registerer, when set, receives the proxy's metrics.
	Registerer prometheus.Registerer
	// DialTimeout bounds each connect to Socket. Default DefaultDialTimeout.
	DialTimeout time.Duration
	// Token, when set, is the bearer token each connection that is not
	// over a unix socket or vsock must send in its first request's
	// Authorization header. Empty: no connection needs one.
	Token string
}

// Proxy is the Docker API proxy. Build it with New; one Proxy may serve
// several listeners.
type Proxy struct {
	socket      string
	dialTimeout time.Duration
	headTimeout time.Duration // for a request answered 502 (tests shorten it)
	log         *slog.Logger
	bufs        sync.Pool
	token       bearer.Token

	open         prometheus.Gauge
	total        prometheus.Counter
	dialFailures prometheus.Counter
	authRefused  prometheus.Counter
	toDocker     prometheus.Counter
	fromDocker   prometheus.Counter
}

// New builds a Proxy and registers its metrics on cfg.Registerer.
func New(cfg Config) (*Proxy, error) {
	if cfg.Socket == "" {
		return nil, errors.New("dockerproxy: Config.Socket is required")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	bytesTotal := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "arcbox_agent",
		Name:      "docker_proxy_bytes_total",
		Help:      "Bytes carried by the Docker API proxy, by direction (to_docker, from_docker).",
	}, []string{"direction"})
	p := &Proxy{
		socket:      cfg.Socket,
		dialTimeout: cfg.DialTimeout,
		headTimeout: defaultHeadTimeout,
		log:         cfg.Logger.With("component", "dockerproxy"),
		token:       bearer.New(cfg.Token),
		bufs: sync.Pool{New: func() any {
			b := make([]byte, copyBufferSize)
			return &b
		}},
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "arcbox_agent",
			Name:      "docker_proxy_connections_open",
			Help:      "Connections the Docker API proxy carries now.",
		}),
		total: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "arcbox_agent",
			Name:      "docker_proxy_connections_total",
			Help:      "Connections the Docker API proxy accepted.",
		}),
		dialFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "arcbox_agent",
			Name:      "docker_proxy_dial_failures_total",
			Help:      "Accepted connections answered 502 because dockerd's socket could not be reached.",
		}),
		authRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "arcbox_agent",
			Name:      "docker_proxy_auth_refused_total",
			Help:      "Connections the Docker API proxy refused because their first request did not carry the bearer token.",
		}),
		toDocker:   bytesTotal.WithLabelValues("to_docker"),
		fromDocker: bytesTotal.WithLabelValues("from_docker"),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{p.open, p.total, p.dialFailures, p.authRefused, bytesTotal} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("dockerproxy: register metrics: %w", err)
			}
		}
	}
	return p, nil
}

// Serve accepts connections on ln and proxies each to the socket until ctx
// ends or ln is closed. When ctx ends it closes ln and every connection it
// carries; when ln is closed by someone else it lets its connections end.
// Either way it returns once they have all ended: nil, or the listener's
// error when accepting failed for good.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	// track registers c to be closed when ctx ends, or closes it at once
	// when ctx has ended already.
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			c.Close()
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	untrack := func(c net.Conn) {
		mu.Lock()
		delete(conns, c)
		mu.Unlock()
	}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()

	var err error
	backoff := time.Duration(0)
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil || errors.Is(aerr, net.ErrClosed) || errors.Is(aerr, os.ErrClosed) {
				break
			}
			if !retryable(aerr) {
				err = fmt.Errorf("dockerproxy: accept: %w", aerr)
				break
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed; retrying", "error", aerr, "retry_in", backoff.String())
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			continue
		}
		backoff = 0
		p.total.Inc()
		if !track(c) {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer untrack(c)
			p.handle(ctx, c, track, untrack)
		}()
	}
	wg.Wait()
	return err
}

// retryable reports whether an accept error is worth another try.
func retryable(err error) bool {
	var t interface{ Temporary() bool }
	if errors.As(err, &t) && t.Temporary() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// handle joins client to a fresh connection to the socket, or answers
// 502 when the socket cannot be dialled. A client that needs the token
// shows it first, before the socket is dialled.
func (p *Proxy) handle(ctx context.Context, client net.Conn, track func(net.Conn) bool, untrack func(net.Conn)) {
	defer client.Close()
	var (
		first  []byte // what authenticate read of the client, to pass on
		method string
	)
	if p.needsToken(client) {
		var ok bool
		if first, method, ok = p.authenticate(client); !ok {
			return
		}
	}
	d := net.Dialer{Timeout: p.dialTimeout}
	up, err := d.DialContext(ctx, "unix", p.socket)
	if err != nil {
		if ctx.Err() != nil {
			return // shutting down
		}
		p.dialFailures.Inc()
		p.log.Warn("dockerd socket unreachable; answering 502", "socket", p.socket, "remote", remote(client), "error", err)
		if first != nil {
			p.answer(client, answer(http.StatusBadGateway, method, unavailableMessage(err), ""))
		} else {
			p.answerUnavailable(client, err)
		}
		return
	}
	defer up.Close()
	if !track(up) {
		return
	}
	defer untrack(up)
	p.open.Inc()
	defer p.open.Dec()
	tune(client)
	tune(up)
	if len(first) > 0 {
		n, err := up.Write(first)
		p.toDocker.Add(float64(n))
		if err != nil {
			p.log.Debug("pass the first request on to dockerd", "remote", remote(client), "error", err)
			return
		}
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		p.pipe(up, client, p.toDocker)
	}()
	p.pipe(client, up, p.fromDocker)
	<-done
}

// remote names the peer of c, for logs.
func remote(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return "unknown"
}

// pipe copies src to dst until src's EOF, which it passes on as a
// half-close of dst. On any other error it closes both, which ends the
// other direction too.
func (p *Proxy) pipe(dst, src net.Conn, bytes prometheus.Counter) {
	err := p.copy(dst, src, bytes)
	if err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			dst.Close()
			src.Close()
		}
	}
}

// copy moves src's bytes to dst until EOF (nil) or an error, counting them
// as they go. It starts with reads and writes through a pooled buffer,
// cheapest for the small messages of most API calls; once a read fills the
// buffer (a bulk transfer: image load or save, cp, a build context) it goes
// on with splice(2) when both ends allow it.
func (p *Proxy) copy(dst, src net.Conn, bytes prometheus.Counter) error {
	bp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bp)
	buf := *bp
	trySplice := true
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			bytes.Add(float64(nw))
			if werr != nil {
				return werr
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
		if nr == len(buf) && trySplice {
			if _, handled, err := spliceCopy(dst, src, bytes); handled {
				return err
			}
			trySplice = false // nothing was moved: go on copying
		}
	}
}

// tune asks for larger socket buffers, when the connection has them.
func tune(c net.Conn) {
	type buffered interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}
	if b, ok := c.(buffered); ok {
		_ = b.SetReadBuffer(socketBufferSize)
		_ = b.SetWriteBuffer(socketBufferSize)
	}
}
