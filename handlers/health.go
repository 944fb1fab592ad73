package handlers

import (
	"net/http"
	"sync"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// GetLivez answers while the process serves.
func (a *API) GetLivez(w http.ResponseWriter, _ *http.Request) {
	writeJSONBody(w, livezBody())
}

// livezBody is the answer to /livez and /healthz, encoded once.
var livezBody = sync.OnceValue(func() []byte { return jsonLine(api.Health{Status: api.Ok}) })

// GetHealthz is /livez under the name many probes expect.
func (a *API) GetHealthz(w http.ResponseWriter, r *http.Request) { a.GetLivez(w, r) }

// GetReadyz answers 200 once every listener is bound, else 503.
func (a *API) GetReadyz(w http.ResponseWriter, _ *http.Request) {
	ready, list := a.cfg.Listeners()
	out := api.Readiness{Ready: ready, Listeners: make([]api.ListenerState, 0, len(list))}
	for _, l := range list {
		st := api.ListenerState{Name: l.Name, Url: l.URL, State: api.ListenerStateState(l.State)}
		if l.Address != "" {
			st.Address = &l.Address
		}
		if l.Error != "" {
			st.Error = &l.Error
		}
		out.Listeners = append(out.Listeners, st)
	}
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	httpapi.WriteJSON(w, status, out)
}

// GetMetrics serves the Prometheus registry.
func (a *API) GetMetrics(w http.ResponseWriter, r *http.Request) { a.cfg.Metrics.ServeHTTP(w, r) }

// GetOpenAPI serves the contract this binary was built from.
func (a *API) GetOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(a.cfg.Spec)
}
