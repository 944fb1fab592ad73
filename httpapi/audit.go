package httpapi

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

// auditedUpgrades are the GET routes whose WebSocket upgrade changes
// something (runs a process), and so is audited like a POST.
var auditedUpgrades = map[string]bool{
	"/v1/sandboxes/{id}/run":  true,
	"/v1/sandboxes/{id}/exec": true,
}

// auditRequest writes one "audit" line for each mutating call, refused
// ones included, once it is done: who (listener, transport, peer, how it
// was let in), what (method, route, path, the sandbox or snapshot), and
// the outcome (status, duration), with the trace id. Never a header or the
// query string, so never a token. The mux finds the route of a request
// that was refused before it was routed.
func (rt *router) auditRequest(q *request, r *http.Request, status int, took time.Duration) {
	route, id := routeOf(rt.Mux, r)
	if !mutating(r, route) {
		return
	}
	peer, ok := PeerFrom(r.Context())
	if !ok {
		peer = Peer{Transport: "unknown"}
	}
	attrs := []slog.Attr{
		slog.String("listener", peer.Listener),
		slog.String("transport", peer.Transport),
		peer.attr(),
		slog.Bool("authenticated", q.auth == AuthBearer || q.auth == AuthUnixSocket || q.auth == AuthVsockCID),
		slog.String("auth", string(q.auth)),
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
		slog.Duration("took", took),
		slog.String("trace_id", q.traceID),
	)
	rt.audit.LogAttrs(q, slog.LevelInfo, "audit", attrs...)
}

// mutating reports whether a call changes something: every method but
// GET, HEAD and OPTIONS, and the WebSocket upgrades that run a process.
func mutating(r *http.Request, route string) bool {
	switch r.Method {
	case http.MethodGet:
		return auditedUpgrades[route] && strings.Contains(strings.ToLower(r.Header.Get("Upgrade")), "websocket")
	case http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// routeOf returns the route pattern a request matched and its {id}: from
// the routing already done, else (a request refused before routing) by
// asking mux; "unmatched" when no route matches.
func routeOf(mux *chi.Mux, r *http.Request) (route, id string) {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		if route := rc.RoutePattern(); route != "" {
			return route, rc.URLParam("id")
		}
	}
	rc := chi.NewRouteContext()
	if route = mux.Find(rc, r.Method, r.URL.Path); route == "" {
		return "unmatched", ""
	}
	return route, rc.URLParam("id")
}
