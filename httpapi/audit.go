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
// query string, so never a token. matched is the route chi matched
// (routePattern); the mux finds the route of a request that was refused
// before it was routed, only when the call may be one to audit.
func (rt *router) auditRequest(q *request, r *http.Request, matched string, status int, took time.Duration) {
	if !mayMutate(r) {
		return // a GET, HEAD or OPTIONS that runs nothing: no route needed
	}
	route, id := routeOf(rt.Mux, r, matched)
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

// mayMutate reports whether a call may change something, whatever its
// route: every method but GET, HEAD and OPTIONS, and a GET that asks for
// a WebSocket (mutating says whether its route runs a process).
func mayMutate(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet:
		return WantsWebSocket(r)
	case http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// mutating reports whether a call that mayMutate changes something: all
// but the WebSocket upgrades of routes that run no process.
func mutating(r *http.Request, route string) bool {
	return r.Method != http.MethodGet || auditedUpgrades[route]
}

// routeOf returns the route pattern a request matched and its {id}: the
// pattern routePattern found (matched), else (a request refused before
// routing) by asking mux; "unmatched" when no route matches.
func routeOf(mux *chi.Mux, r *http.Request, matched string) (route, id string) {
	if matched != unmatchedRoute {
		return matched, chi.URLParam(r, "id")
	}
	rc := chi.NewRouteContext()
	if route = mux.Find(rc, r.Method, r.URL.Path); route == "" {
		return unmatchedRoute, ""
	}
	return route, rc.URLParam("id")
}
