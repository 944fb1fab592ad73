package handlers

import (
	"net/http"

	"github.com/arcbox/arcbox-agent/api"
)

// EnsureRuntime starts containerd and dockerd if needed.
func (a *API) EnsureRuntime(w http.ResponseWriter, r *http.Request) { notImplemented(w, r) }

// GetRuntimeStatus reports the runtime's state.
func (a *API) GetRuntimeStatus(w http.ResponseWriter, r *http.Request) { notImplemented(w, r) }

// GetRuntimeLogs serves a daemon's log.
func (a *API) GetRuntimeLogs(w http.ResponseWriter, r *http.Request, _ api.GetRuntimeLogsParams) {
	notImplemented(w, r)
}
