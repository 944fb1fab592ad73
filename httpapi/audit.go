package httpapi

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// auditedUpgrades are the GET routes whose WebSocket upgrade changes
// something (runs a process), and so is audited like a POST.
var auditedUpgrades = map[string]bool{
	"/v1/sandboxes/{id}/run":  true,
	"/v1/sandboxes/{id}/exec": true,
}

// audit writes one "audit" line for each mutating call, refused ones
// included, once it is done: who (listener, transport, peer, how it was
// let in), what (method, route, path, the sandbox or snapshot), and the
// outcome (status, duration), with the trace id. Never a header or the
// query string, so never a token. mux finds the route of a request that
// was refused before it was routed.
func audit(logger *slog.Logger, mux *chi.Mux) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			ctx, st := withAuthState(r.Context())
			r = r.WithContext(ctx)
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			defer func() {
				route, id := routeOf(mux, r)
				if !mutating(r, route) {
					return
				}
				status := ww.Status()
				if status == 0 {
					status = http.StatusOK
				}
				peer, ok := PeerFrom(r.Context())
				if !ok {
					peer = Peer{Transport: "unknown"}
				}
				attrs := []slog.Attr{
					slog.String("listener", peer.Listener),
					slog.String("transport", peer.Transport),
					peer.attr(),
					slog.Bool("authenticated", st.auth == AuthBearer || st.auth == AuthUnixSocket || st.auth == AuthVsockCID),
					slog.String("auth", string(st.auth)),
					slog.String("method", r.Method),
					slog.String("route", route),
					slog.String("path", r.URL.Path),
				}
				if id != "" {
					key := "sandbox_id"
					if strings.HasPrefix(route, "/v1/snapshots/") {
						key = "snapshot_id"
					}
					attrs = append(attrs, slog.String(key, id))
				}
				attrs = append(attrs,
					slog.Int("status", status),
					slog.Duration("took", time.Since(start)),
					slog.String("trace_id", TraceID(r.Context())),
				)
				logger.LogAttrs(r.Context(), slog.LevelInfo, "audit", attrs...)
			}()
			next.ServeHTTP(ww, r)
		})
	}
}

// mutating reports whether a call changes something: every method but
// GET, HEAD and OPTIONS, and the WebSocket upgrades that run a process.
func mutating(r *http.Request, route string) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return r.Method == http.MethodGet && auditedUpgrades[route] &&
			strings.Contains(strings.ToLower(r.Header.Get("Upgrade")), "websocket")
	}
	return true
}

// routeOf returns the route pattern a request matched and its {id}: from
// the routing already done, else (a request refused before routing) by
// asking mux; "unmatched" when no route matches.
func routeOf(mux *chi.Mux, r *http.Request) (route, id string) {
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
		return rc.RoutePattern(), rc.URLParam("id")
	}
	rc := chi.NewRouteContext()
	if route = mux.Find(rc, r.Method, r.URL.Path); route == "" {
		return "unmatched", ""
	}
	return route, rc.URLParam("id")
}
