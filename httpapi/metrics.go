package httpapi

import (
	"bufio"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/api"
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

	// observers holds duration's series by their labels, so that a
	// request finds its own without the vector hashing the labels and
	// the status formatted: a map only added to (copied then, under mu),
	// read without a lock.
	observers atomic.Pointer[map[seriesKey]prometheus.Observer]
	mu        sync.Mutex
}

// seriesKey is a request series' labels, the code still a number.
type seriesKey struct {
	method, route string
	code          int
}

// newHTTPMetrics registers the HTTP series in reg, with every stream
// series streamRoutes (the contract's, api.StreamRoutes) can have at zero:
// a dashboard or alert sees each route's streams from the start, not from
// its first one.
func newHTTPMetrics(reg prometheus.Registerer, streamRoutes []api.StreamRoute) *httpMetrics {
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
	m.observers.Store(&map[seriesKey]prometheus.Observer{})
	for _, r := range streamRoutes {
		m.streamsOpen.WithLabelValues(r.Pattern)
		for _, kind := range streamKinds(r) {
			m.streams.WithLabelValues(r.Pattern, kind)
			m.streamDuration.WithLabelValues(r.Pattern, kind)
		}
	}
	return m
}

// streamKinds are the kinds of stream r's answer can be, by the rules
// responseWatch applies to a response: an upgrade is a WebSocket, a media
// type is what streamMediaKind says, and any other (a followed log's
// text/plain) is a stream because it is flushed before it ends.
func streamKinds(r api.StreamRoute) []string {
	var kinds []string
	if r.Upgrade {
		kinds = append(kinds, streamWebSocket)
	}
	for _, mt := range r.MediaTypes {
		kind := streamMediaKind([]string{mt})
		if kind == "" {
			kind = streamText
		}
		if !slices.Contains(kinds, kind) {
			kinds = append(kinds, kind)
		}
	}
	return kinds
}

// observe puts a plain request's duration in its series.
func (m *httpMetrics) observe(method, route string, code int, took time.Duration) {
	k := seriesKey{methodLabel(method), route, code}
	o, ok := (*m.observers.Load())[k]
	if !ok {
		o = m.observer(k)
	}
	o.Observe(took.Seconds())
}

// observer adds k's series to observers and returns it.
func (m *httpMetrics) observer(k seriesKey) prometheus.Observer {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.observers.Load()
	if o, ok := old[k]; ok {
		return o
	}
	o := m.duration.WithLabelValues(k.method, k.route, strconv.Itoa(k.code))
	grown := make(map[seriesKey]prometheus.Observer, len(old)+1)
	maps.Copy(grown, old)
	grown[k] = o
	m.observers.Store(&grown)
	return o
}

// methodLabel is a request's method as a label: the methods of HTTP, and
// "other" for any other word a client sends, which would otherwise make
// a series of each.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "other"
}

// responseWatch records a response's status and size for the access log,
// and notices when the response is a stream, with no help from the
// handler: its status is 101 or it is hijacked (a WebSocket), its
// Content-Type is NDJSON or SSE, or the handler flushes it before it ends.
// A stream is counted in m's stream series when that is first seen.
type responseWatch struct {
	http.ResponseWriter
	q           *request
	m           *httpMetrics
	status      int // 0 until the header is written
	bytes       int
	kind        string // "" while the response is not a stream
	streamRoute string // the open gauge's label, for its Dec
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
	w.final(code)
	w.ResponseWriter.WriteHeader(code)
}

// final records the response's final status and whether its header makes
// it a stream.
func (w *responseWatch) final(code int) {
	w.status = code
	if code == http.StatusSwitchingProtocols {
		w.streaming(streamWebSocket)
	} else if kind := streamMediaKind(w.Header()["Content-Type"]); kind != "" {
		w.streaming(kind)
	}
}

// Write records an implicit 200 without saying it to the writer beneath,
// which says it itself, as it would without the watch.
func (w *responseWatch) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.final(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += n
	return n, err
}

// FlushError sends what is buffered, the header first: a response flushed
// before it ends is sent as it comes, a stream.
func (w *responseWatch) FlushError() error {
	if w.status == 0 {
		w.final(http.StatusOK)
	}
	// A flush makes a stream of anything but one JSON document, which a
	// handler flushes only to have it out before what it does next (a
	// shutdown's 202), unless it is already known as a stream of a kind.
	if !isJSON(w.Header()["Content-Type"]) {
		w.streaming(streamText)
	}
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

// streaming marks the response a stream of kind, once, and counts it by
// the route it was routed to.
func (w *responseWatch) streaming(kind string) {
	if w.kind != "" {
		return
	}
	w.kind = kind
	w.streamRoute = routePattern(w.q.rctx)
	w.m.streamsOpen.WithLabelValues(w.streamRoute).Inc()
	w.m.streams.WithLabelValues(w.streamRoute, kind).Inc()
}

// isJSON reports whether a Content-Type is application/json.
func isJSON(contentType []string) bool {
	if len(contentType) == 0 {
		return false
	}
	mt, _, _ := strings.Cut(contentType[0], ";")
	return strings.EqualFold(strings.TrimSpace(mt), "application/json")
}

// streamMediaKind is the stream kind of a response's Content-Type header
// values, or "" for one that is not a stream's. It compares the media
// type (before any parameter, case aside) rather than parse the header:
// every response passes here.
func streamMediaKind(contentType []string) string {
	if len(contentType) == 0 {
		return ""
	}
	mt, _, _ := strings.Cut(contentType[0], ";")
	mt = strings.TrimSpace(mt)
	switch {
	case strings.EqualFold(mt, "application/x-ndjson"):
		return streamNDJSON
	case strings.EqualFold(mt, "text/event-stream"):
		return streamSSE
	}
	return ""
}
