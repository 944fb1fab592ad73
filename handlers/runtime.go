package handlers

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/lifecycle"
)

// Runtime is the part of the container runtime the API serves.
type Runtime interface {
	Ensure(ctx context.Context, startIfNeeded bool) lifecycle.EnsureResult
	Status(ctx context.Context) lifecycle.Status
	// OpenLog opens a daemon's log as a stream to copy; see
	// lifecycle.Runtime.OpenLog for its errors.
	OpenLog(ctx context.Context, service string, opt lifecycle.LogOptions) (io.ReadCloser, error)
}

var _ Runtime = (*lifecycle.Runtime)(nil)

// EnsureRuntime starts containerd and dockerd if needed; an absent body
// means start_if_needed: true.
func (a *API) EnsureRuntime(w http.ResponseWriter, r *http.Request) {
	var req api.RuntimeEnsureRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil && !errors.Is(err, httpapi.ErrEmptyBody) {
		httpapi.WriteErr(w, err)
		return
	}
	start := req.StartIfNeeded == nil || *req.StartIfNeeded
	res := a.cfg.Runtime.Ensure(r.Context(), start)
	log := a.log(r)
	if res.Status == lifecycle.StatusFailed && start {
		log.Warn("runtime ensure failed", "message", res.Message)
	} else {
		log.Info("runtime ensure", "status", res.Status, "start_if_needed", start)
	}
	httpapi.WriteJSON(w, http.StatusOK, api.RuntimeEnsureResponse{
		Ready:    res.Ready,
		Endpoint: res.Endpoint,
		Message:  res.Message,
		Status:   api.RuntimeEnsureResponseStatus(res.Status),
	})
}

// GetRuntimeStatus reports containerd, dockerd and the data volume.
func (a *API) GetRuntimeStatus(w http.ResponseWriter, r *http.Request) {
	st := a.cfg.Runtime.Status(r.Context())
	out := api.RuntimeStatus{
		ContainerdReady: st.ContainerdReady,
		DockerReady:     st.DockerReady,
		Endpoint:        st.Endpoint,
		Detail:          st.Detail,
		Services:        make([]api.ServiceStatus, 0, len(st.Services)),
	}
	for _, s := range st.Services {
		out.Services = append(out.Services, api.ServiceStatus{Name: s.Name, Status: api.ServiceStatusStatus(s.Status), Detail: s.Detail})
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}
