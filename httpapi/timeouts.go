package httpapi

import "time"

// The read deadlines of the agent's HTTP server. Each is far longer than an
// honest client needs even on a machine loaded to a standstill (headers are
// a few hundred bytes, a body at most 1 MiB, both over vsock or loopback),
// and short enough that clients trickling a byte at a time cannot hold the
// agent's connections, and their goroutines, for long.
const (
	// ReadHeaderTimeout bounds reading a request's headers; past it the
	// connection is closed.
	ReadHeaderTimeout = 10 * time.Second
	// BodyReadTimeout bounds reading a request's body, counted from the
	// end of its headers; past it the answer is a 408. It covers the body
	// only, so a run's output stream, a WebSocket or a followed log lasts
	// as long as it needs.
	BodyReadTimeout = 30 * time.Second
	// IdleTimeout bounds how long a kept-alive connection waits for its
	// next request; clients dial again when they need to.
	IdleTimeout = 2 * time.Minute
)
