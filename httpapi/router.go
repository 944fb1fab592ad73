// Package httpapi is the agent's HTTP edge: listeners given as URLs (vsock,
// unix, tcp), the chi router built from the generated OpenAPI interface, its
// middleware (trace id, access log, request metrics, panic recovery, audit
// log, bearer-token authentication, body limit), and the JSON helpers that give every error one shape.
package httpapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi/bearer"
)

// RouterConfig is what NewRouter needs; API, Logger and Registerer are
// required.
type RouterConfig struct {
	API        api.ServerInterface
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// BodyReadTimeout is how long a request body may take to arrive (0:
	// the agent's BodyReadTimeout); tests shorten it.
	BodyReadTimeout time.Duration
	// Token, when set, is the bearer token every request must carry but
	// those on unix sockets and vsock (see PeerListener); "" lets every
	// request in, which main allows only on loopback when told to.
	Token string
	// Audit gets one line per mutating call; nil is Logger with
	// component "audit".
	Audit *slog.Logger
	// StreamedBody, when set, picks the requests whose body is a stream
	// (a file upload) rather than JSON: the handler bounds those itself,
	// past the 1 MiB of JSON, and they need only keep arriving (each read
	// within the body timeout) rather than arrive whole in it.
	StreamedBody func(*http.Request) bool
}

// NewRouter returns the agent's HTTP handler: the routes of openapi.yaml,
// served by cfg.API, behind the middleware every request goes through.
func NewRouter(cfg RouterConfig) http.Handler {
	bodyTimeout := cfg.BodyReadTimeout
	if bodyTimeout <= 0 {
		bodyTimeout = BodyReadTimeout
	}
	auditLog := cfg.Audit
	if auditLog == nil {
		auditLog = cfg.Logger.With("component", "audit")
	}
	r := chi.NewRouter()
	r.Use(recoverer, authenticate(bearer.New(cfg.Token)), limitBody(bodyTimeout, cfg.StreamedBody))
	r.NotFound(func(w http.ResponseWriter, req *http.Request) {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", req.Method, req.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		allowed := allowedMethods(r, req.URL.Path)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		WriteError(w, http.StatusMethodNotAllowed,
			fmt.Sprintf("%s is not allowed on %s; allowed: %s", req.Method, req.URL.Path, strings.Join(allowed, ", ")))
	})
	api.HandlerWithOptions(cfg.API, api.ChiServerOptions{
		BaseRouter: r,
		ErrorHandlerFunc: func(w http.ResponseWriter, _ *http.Request, err error) {
			WriteError(w, http.StatusBadRequest, paramMessage(err))
		},
	})
	return &router{
		Mux:     r,
		logger:  cfg.Logger,
		audit:   auditLog,
		metrics: newHTTPMetrics(cfg.Registerer, api.StreamRoutes),
		ids:     newTraceIDs(),
		rctxs:   sync.Pool{New: func() any { return chi.NewRouteContext() }},
	}
}

// router is chi's mux behind what every request gets first and last: a
// trace id (the client's, when valid, echoed, or a new one), then, once it
// ends, its request or stream metrics, its audit line if it changed
// something, and its access log line. The middleware chi runs inside
// (recoverer, authenticate, limitBody) sees the request this made.
type router struct {
	*chi.Mux
	logger  *slog.Logger
	audit   *slog.Logger
	metrics *httpMetrics
	ids     *traceIDs
	rctxs   sync.Pool // *chi.Context
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	q := &request{Context: r.Context(), base: rt.logger}
	q.traceID = r.Header.Get(TraceHeader)
	if !validTraceID(q.traceID) {
		q.traceID = rt.ids.next()
	}
	q.traceHeader[0] = q.traceID
	w.Header()[TraceHeader] = q.traceHeader[:]
	rctx := rt.rctxs.Get().(*chi.Context)
	rctx.Reset()
	rctx.Routes = rt.Mux
	q.rctx = rctx
	q.w = responseWatch{ResponseWriter: w, q: q, m: rt.metrics}
	r = r.WithContext(q)
	defer func() {
		rt.finish(q, r, time.Since(start))
		rt.rctxs.Put(rctx)
	}()
	rt.Mux.ServeHTTP(&q.w, r) // chi finds its routing context in q and adds none
}

// finish observes a request that has ended, panicked or not: a plain
// request's duration in the request histogram, a stream's in the stream
// series (see httpMetrics), by the route pattern chi matched; then its
// audit line and its access log line.
func (rt *router) finish(q *request, r *http.Request, took time.Duration) {
	status := q.w.status
	if status == 0 {
		status = http.StatusOK // nothing written: net/http answers 200
	}
	var route string
	if q.w.kind != "" {
		route = q.w.streamRoute // found when the stream began
		rt.metrics.streamsOpen.WithLabelValues(route).Dec()
		rt.metrics.streamDuration.WithLabelValues(route, q.w.kind).Observe(took.Seconds())
	} else {
		route = routePattern(q.rctx)
		rt.metrics.observe(r.Method, route, status, took)
	}
	rt.auditRequest(q, r, route, status, took)
	rt.logRequest(q, r, route, status, took)
}

func allowedMethods(routes chi.Routes, path string) []string {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if routes.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
		}
	}
	return allowed
}

// paramMessage says what is wrong with a parameter the generated code
// could not bind, naming it: `parameter "after": "abc" is not a whole
// number`, not strconv's words.
func paramMessage(err error) string {
	var name string
	var format *api.InvalidParamFormatError
	var many *api.TooManyValuesForParamError
	switch {
	case errors.As(err, &format):
		name = format.ParamName
	case errors.As(err, &many):
		return fmt.Sprintf("parameter %q: given %d times; give it once", many.ParamName, many.Count)
	default:
		return err.Error()
	}
	var num *strconv.NumError
	switch {
	case errors.As(err, &num) && errors.Is(num.Err, strconv.ErrRange):
		return fmt.Sprintf("parameter %q: %q is out of range", name, num.Num)
	case errors.As(err, &num):
		return fmt.Sprintf("parameter %q: %q is not a whole number", name, num.Num)
	}
	return fmt.Sprintf("parameter %q: %v", name, format.Err)
}
