// Package httpapi is the agent's HTTP edge: listeners given as URLs (vsock,
// unix, tcp), the chi router built from the generated OpenAPI interface, its
// middleware (trace id, access log, request metrics, panic recovery, body
// limit), and the JSON helpers that give every error one shape.
package httpapi

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/api"
)

// RouterConfig is what NewRouter needs; every field is required but
// BodyReadTimeout.
type RouterConfig struct {
	API        api.ServerInterface
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// BodyReadTimeout is how long a request body may take to arrive (0:
	// the agent's BodyReadTimeout); tests shorten it.
	BodyReadTimeout time.Duration
}

// NewRouter returns the agent's HTTP handler: the routes of openapi.yaml,
// served by cfg.API, behind the middleware every request goes through.
func NewRouter(cfg RouterConfig) http.Handler {
	bodyTimeout := cfg.BodyReadTimeout
	if bodyTimeout <= 0 {
		bodyTimeout = BodyReadTimeout
	}
	r := chi.NewRouter()
	r.Use(withTrace(cfg.Logger), accessLog(newRequestMetrics(cfg.Registerer)), recoverer, limitBody(bodyTimeout))
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
			WriteError(w, http.StatusBadRequest, err.Error())
		},
	})
	return r
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
