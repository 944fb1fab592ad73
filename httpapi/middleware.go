package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
)

// TraceHeader carries a request's trace id in both directions.
const TraceHeader = "X-Trace-Id"

type ctxKey int

const (
	traceIDKey ctxKey = iota
	loggerKey
)

// validTraceID keeps what a client sends from breaking log lines or headers.
var validTraceID = regexp.MustCompile(`^[A-Za-z0-9._:/+=-]{1,128}$`)

// TraceID returns the request's trace id, or "" outside a request.
func TraceID(ctx context.Context) string {
	id, _ := ctx.Value(traceIDKey).(string)
	return id
}

// Logger returns the request's logger, which carries its trace id; outside
// a request it returns fallback.
func Logger(ctx context.Context, fallback *slog.Logger) *slog.Logger {
	if l, ok := ctx.Value(loggerKey).(*slog.Logger); ok {
		return l
	}
	return fallback
}

func newTraceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// withTrace echoes the client's X-Trace-Id or makes one, and gives the
// request a logger that carries it.
func withTrace(base *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id := r.Header.Get(TraceHeader)
			if !validTraceID.MatchString(id) {
				id = newTraceID()
			}
			w.Header().Set(TraceHeader, id)
			ctx := context.WithValue(r.Context(), traceIDKey, id)
			ctx = context.WithValue(ctx, loggerKey, base.With("trace_id", id))
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// accessLog logs each request once it ends and observes it (see
// httpMetrics): a plain request's duration in the request histogram, a
// stream's in the stream series, by the route pattern chi matched.
func accessLog(m *httpMetrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			var streamRoute string // the open gauge's label, for its Dec
			ww := &responseWatch{ResponseWriter: w, onStream: func(kind string) {
				streamRoute = routePattern(r)
				m.streamsOpen.WithLabelValues(streamRoute).Inc()
				m.streams.WithLabelValues(streamRoute, kind).Inc()
			}}
			defer func() {
				took := time.Since(start)
				status := ww.status
				if status == 0 {
					status = http.StatusOK // nothing written: net/http answers 200
				}
				route := routePattern(r)
				if ww.kind != "" {
					m.streamsOpen.WithLabelValues(streamRoute).Dec()
					m.streamDuration.WithLabelValues(streamRoute, ww.kind).Observe(took.Seconds())
				} else {
					m.duration.WithLabelValues(r.Method, route, strconv.Itoa(status)).Observe(took.Seconds())
				}
				level := slog.LevelInfo
				switch {
				case status >= 500:
					level = slog.LevelError
				case r.URL.Path == "/livez" || r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics":
					level = slog.LevelDebug // probes and scrapes would drown the log
				}
				attrs := []slog.Attr{
					slog.String("method", r.Method),
					slog.String("path", r.URL.Path),
					slog.String("route", route),
					slog.Int("status", status),
					slog.Int("bytes", ww.bytes),
					slog.Duration("took", took),
					slog.String("remote", r.RemoteAddr),
				}
				if ww.kind != "" {
					attrs = append(attrs, slog.String("stream", ww.kind))
				}
				Logger(r.Context(), slog.Default()).LogAttrs(r.Context(), level, "request", attrs...)
			}()
			next.ServeHTTP(ww, r)
		})
	}
}

// routePattern is the route chi matched for r, or "unmatched".
func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
		return rc.RoutePattern()
	}
	return "unmatched"
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
