package httpapi

import (
	"bufio"
	"mime"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// Stream kinds, the kind label of the stream metrics.
const (
	streamNDJSON    = "ndjson"    // application/x-ndjson: run, events, run output
	streamSSE       = "sse"       // text/event-stream: events
	streamWebSocket = "websocket" // an upgrade (101): run, exec, events
	// streamText is any other response the handler flushes before it
	// ends: a followed runtime log (text/plain).
	streamText = "text"
)

// httpMetrics observes requests by route pattern, never the raw path, so
// ids do not explode the cardinality. A request is either a plain one,
// whose latency goes to the request histogram, or a stream (seconds to
// hours of output, a WebSocket), which has series of its own: a stream's
// length says how long a client listened, not how fast the agent answered.
type httpMetrics struct {
	duration       *prometheus.HistogramVec // plain requests
	streamsOpen    *prometheus.GaugeVec
	streams        *prometheus.CounterVec
	streamDuration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "arcbox_agent",
			Name:      "http_request_duration_seconds",
			Help:      "How long HTTP requests that are not streams took, by method, route pattern and status code.",
			Buckets:   []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route", "code"}),
		streamsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "arcbox_agent",
			Name:      "http_streams_open",
			Help:      "Streaming responses (NDJSON, SSE, WebSocket, followed text) open now, by route pattern.",
		}, []string{"route"}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "arcbox_agent",
			Name:      "http_streams_total",
			Help:      "Streaming responses begun, by route pattern and kind (ndjson, sse, websocket, text).",
		}, []string{"route", "kind"}),
		streamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "arcbox_agent",
			Name:      "http_stream_duration_seconds",
			Help:      "How long streaming responses stayed open, from the request to its end, by route pattern and kind.",
			Buckets:   []float64{.1, .5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600},
		}, []string{"route", "kind"}),
	}
	reg.MustRegister(m.duration, m.streamsOpen, m.streams, m.streamDuration)
	return m
}

// responseWatch records a response's status and size for the access log,
// and notices when the response is a stream, with no help from the
// handler: its status is 101 or it is hijacked (a WebSocket), its
// Content-Type is NDJSON or SSE, or the handler flushes it before it ends.
// onStream is called once, when that is first seen.
type responseWatch struct {
	http.ResponseWriter
	status   int // 0 until the header is written
	bytes    int
	kind     string // "" while the response is not a stream
	onStream func(kind string)
}

var (
	_ http.Flusher  = (*responseWatch)(nil)
	_ http.Hijacker = (*responseWatch)(nil)
)

// WriteHeader passes informational statuses (1xx but 101) through, and the
// first final one; a second is dropped, as net/http would drop it.
func (w *responseWatch) WriteHeader(code int) {
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	if w.status != 0 {
		return
	}
	w.status = code
	if code == http.StatusSwitchingProtocols {
		w.streaming(streamWebSocket)
	} else if kind := streamMediaKind(w.Header().Get("Content-Type")); kind != "" {
		w.streaming(kind)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWatch) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += n
	return n, err
}

// FlushError sends what is buffered, the header first: a response flushed
// before it ends is sent as it comes, a stream.
func (w *responseWatch) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.streaming(streamText) // unless already known as a stream of a kind
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Flush is FlushError for those that want an http.Flusher.
func (w *responseWatch) Flush() { _ = w.FlushError() }

// Hijack hands the connection over (a WebSocket upgrade).
func (w *responseWatch) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.streaming(streamWebSocket)
	}
	return c, rw, err
}

// Unwrap lets http.ResponseController reach the writer beneath.
func (w *responseWatch) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// streaming marks the response a stream of kind, once.
func (w *responseWatch) streaming(kind string) {
	if w.kind != "" {
		return
	}
	w.kind = kind
	if w.onStream != nil {
		w.onStream(kind)
	}
}

// streamMediaKind is the stream kind of a Content-Type, or "" for one that
// is not a stream's.
func streamMediaKind(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	switch mt {
	case "application/x-ndjson":
		return streamNDJSON
	case "text/event-stream":
		return streamSSE
	}
	return ""
}
