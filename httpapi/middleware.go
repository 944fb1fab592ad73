package httpapi

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
)

// TraceHeader carries a request's trace id in both directions.
const TraceHeader = "X-Trace-Id"

// maxTraceID is the longest trace id a client may send.
const maxTraceID = 128

// traceIDChars are the bytes a client's trace id may hold: none that
// could break a log line or a header.
var traceIDChars = func() (ok [256]bool) {
	for _, c := range []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/+=-") {
		ok[c] = true
	}
	return ok
}()

// validTraceID keeps what a client sends from breaking log lines or
// headers: 1 to 128 of traceIDChars.
func validTraceID(id string) bool {
	if id == "" || len(id) > maxTraceID {
		return false
	}
	for i := range len(id) {
		if !traceIDChars[id[i]] {
			return false
		}
	}
	return true
}

// traceIDs makes the trace ids of requests that come without one: 32 hex
// digits, 16 of a random prefix drawn once per process and 16 of a
// counter. They are not secrets: a trace id only ties a request's log
// lines together, so an id one can guess harms nothing, and a counter
// makes one without a system call. The prefix keeps ids of the agent's
// different runs apart.
type traceIDs struct {
	prefix [16]byte // hex
	n      atomic.Uint64
}

func newTraceIDs() *traceIDs {
	t := &traceIDs{}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], rand.Uint64())
	hex.Encode(t.prefix[:], b[:])
	return t
}

func (t *traceIDs) next() string {
	var id [32]byte
	copy(id[:16], t.prefix[:])
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], t.n.Add(1))
	hex.Encode(id[16:], n[:])
	return string(id[:])
}

// request is what the router keeps of one request while it serves it:
// its trace id, its logger (made when something first asks for it), how
// authenticate let it in, and its response as responseWatch sees it. It
// is also the request's context, one that answers for chi's routing
// context too: one allocation and one copy of the http.Request for all
// the middleware, where a context.WithValue each would take several. It
// is not reused, so a goroutine that outlives the request still reads
// its trace id; chi's routing context is pooled, as chi itself pools it.
type request struct {
	context.Context // the request's context as net/http gave it
	rctx            *chi.Context
	traceID         string
	traceHeader     [1]string // the response header's value, without a slice of its own
	base            *slog.Logger
	logger          atomic.Pointer[slog.Logger]
	auth            Auth
	w               responseWatch
}

type requestKey struct{}

// Value answers for the request itself and chi's routing context, and
// asks the parent for the rest.
func (q *request) Value(key any) any {
	switch key {
	case requestKey{}:
		return q
	case chi.RouteCtxKey:
		return q.rctx
	}
	return q.Context.Value(key)
}

// requestOf returns the request ctx belongs to; nil outside one.
func requestOf(ctx context.Context) *request {
	q, _ := ctx.Value(requestKey{}).(*request)
	return q
}

// log returns the request's logger, made the first time it is asked for:
// a request that logs nothing (a ping) makes none.
func (q *request) log() *slog.Logger {
	if l := q.logger.Load(); l != nil {
		return l
	}
	l := q.base.With("trace_id", q.traceID)
	if q.logger.CompareAndSwap(nil, l) {
		return l
	}
	return q.logger.Load()
}

// TraceID returns the request's trace id, or "" outside a request.
func TraceID(ctx context.Context) string {
	if q := requestOf(ctx); q != nil {
		return q.traceID
	}
	return ""
}

// Logger returns the request's logger, which carries its trace id; outside
// a request it returns fallback.
func Logger(ctx context.Context, fallback *slog.Logger) *slog.Logger {
	if q := requestOf(ctx); q != nil {
		return q.log()
	}
	return fallback
}

// quietRequest reports whether r is a read a client or a probe makes all
// the time (ping, the health probes, the metrics scrape), whose access log
// line is debug, not info: one line a ping would drown the log, which for
// PID 1 is the VM's console. A POST to /v1/ping, which can set the clock,
// is logged as any other request.
func quietRequest(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	switch r.URL.Path {
	case "/v1/ping", "/livez", "/healthz", "/readyz", "/metrics":
		return true
	}
	return false
}

// logRequest writes a request's access log line once it ends: info, but
// debug for a quiet path and error for a 5xx. Nothing is built when the
// level is off.
func (rt *router) logRequest(q *request, r *http.Request, route string, status int, took time.Duration) {
	level := slog.LevelInfo
	switch {
	case status >= 500:
		level = slog.LevelError
	case quietRequest(r):
		level = slog.LevelDebug
	}
	if !rt.logger.Enabled(q, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("trace_id", q.traceID),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("route", route),
		slog.Int("status", status),
		slog.Int("bytes", q.w.bytes),
		slog.Duration("took", took),
		slog.String("remote", r.RemoteAddr),
	}
	if q.w.kind != "" {
		attrs = append(attrs, slog.String("stream", q.w.kind))
	}
	rt.logger.LogAttrs(q, level, "request", attrs...)
}

// unmatchedRoute is the route label of a request chi did not route.
const unmatchedRoute = "unmatched"

// routePattern is the route chi matched (rc, nil outside chi), or
// unmatchedRoute.
func routePattern(rc *chi.Context) string {
	if rc != nil {
		if p := rc.RoutePattern(); p != "" {
			return p
		}
	}
	return unmatchedRoute
}

// recoverer turns a handler's panic into a logged stack and a JSON 500.
func recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			rec := recover()
			if rec == nil {
				return
			}
			if err, ok := rec.(error); ok && errors.Is(err, http.ErrAbortHandler) {
				panic(rec) // net/http's own signal to drop the connection
			}
			Logger(r.Context(), slog.Default()).Error("handler panicked",
				"panic", fmt.Sprint(rec), "stack", string(debug.Stack()))
			if r.Header.Get("Connection") != "Upgrade" {
				WriteError(w, http.StatusInternalServerError,
					"internal error (trace id "+TraceID(r.Context())+"); the agent's log has the details")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// limitBody refuses bodies over MaxBodyBytes (at once when the length is
// declared, else when the handler reads past the limit) and gives a body
// timeout to arrive: the connection's read deadline is set while the body
// is read, and cleared once it has all been read, so what follows (a
// stream, the next request's idle wait) is not cut by it. A streamed body
// (streamed(r): an upload) is not capped here, its handler bounds it, and
// each of its reads gets timeout instead of the whole body: an upload may
// take as long as it keeps coming.
func limitBody(timeout time.Duration, streamed func(*http.Request) bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			stream := streamed != nil && streamed(r)
			if r.ContentLength > MaxBodyBytes && !stream {
				WriteError(w, http.StatusRequestEntityTooLarge,
					fmt.Sprintf("request body is %d bytes; the limit is %d (1 MiB)", r.ContentLength, MaxBodyBytes))
				return
			}
			if r.Body != nil && r.Body != http.NoBody {
				rc := http.NewResponseController(w)
				if rc.SetReadDeadline(time.Now().Add(timeout)) == nil {
					r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, each: stream, timeout: timeout, left: r.ContentLength}
				}
				if !stream {
					r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// deadlineBody clears the connection's read deadline once the body has
// been read to its end; with each, every read that brings data moves the
// deadline timeout on. A body of known length clears it as its last byte
// comes, before the read that sees its end: net/http starts reading the
// connection in the background then, and must not inherit the deadline.
type deadlineBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	done    bool
	each    bool
	timeout time.Duration
	left    int64 // bytes still to come; -1: unknown
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	switch {
	case b.done:
	case err == io.EOF || b.left == 0:
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	case b.each && n > 0:
		_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	}
	return n, err
}
