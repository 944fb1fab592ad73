package httpapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// panicky serves nothing but a panic from GET /v1/info.
type panicky struct{ api.Unimplemented }

func (panicky) GetInfo(http.ResponseWriter, *http.Request) { panic("boom") }

func TestPanicBecomesJSON500AndIsLogged(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	h := httpapi.NewRouter(httpapi.RouterConfig{API: panicky{}, Logger: logger, Registerer: prometheus.NewRegistry()})
	srv := httptest.NewServer(h)
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/info", nil)
	req.Header.Set(httpapi.TraceHeader, "t-panic")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e httpapi.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 500 || e.Code != 500 || !strings.Contains(e.Message, "t-panic") {
		t.Errorf("got %d %+v, want a JSON 500 naming the trace id", resp.StatusCode, e)
	}
	if !strings.Contains(logs.String(), `"panic":"boom"`) || !strings.Contains(logs.String(), `"trace_id":"t-panic"`) {
		t.Errorf("the panic was not logged with its trace id:\n%s", logs.String())
	}
	// The server goes on.
	resp2, err := http.Get(srv.URL + "/v1/info")
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
}

// TestEveryRouteIsInTheSpec walks the router and fails on any route the
// contract lacks, and on any operation of the contract with no route.
func TestEveryRouteIsInTheSpec(t *testing.T) {
	spec, _ := apitest.Spec(t)
	h := httpapi.NewRouter(httpapi.RouterConfig{API: api.Unimplemented{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
	routes := map[string]bool{}
	err := chi.Walk(h.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		route = strings.TrimSuffix(route, "/")
		if route == "" {
			route = "/"
		}
		routes[method+" "+route] = true
		item := spec.Paths.Find(route)
		if item == nil || item.GetOperation(method) == nil {
			t.Errorf("route %s %s is not in openapi.yaml", method, route)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for path, item := range spec.Paths.Map() {
		for method := range item.Operations() {
			if !routes[method+" "+path] {
				t.Errorf("openapi.yaml's %s %s has no route", method, path)
			}
		}
	}
}
