package handlers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/lifecycle"
)

// Runtime is the part of the container runtime the API serves.
type Runtime interface {
	Ensure(ctx context.Context, startIfNeeded bool) lifecycle.EnsureResult
	Status(ctx context.Context) lifecycle.Status
	OpenLog(service string) (*os.File, error)
	LogTail(service string, n int) ([]byte, int64, error)
	Follow(ctx context.Context, service string, w io.Writer, from int64) error
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

// GetRuntimeLogs serves a daemon's log as text: all of it, or its last
// tail lines, then what is appended while follow holds the response open.
func (a *API) GetRuntimeLogs(w http.ResponseWriter, r *http.Request, params api.GetRuntimeLogsParams) {
	if params.Tail != nil {
		if err := checkRange(`query parameter "tail"`, int64(*params.Tail), 0, maxLogTail, "a million lines"); err != nil {
			httpapi.WriteErr(w, err)
			return
		}
	}
	f, err := a.cfg.Runtime.OpenLog(params.Service)
	switch {
	case errors.Is(err, lifecycle.ErrUnknownService):
		httpapi.WriteErr(w, fmt.Errorf("%w: service %q has no log; the services are containerd and dockerd", httpapi.ErrNotFound, params.Service))
		return
	case errors.Is(err, fs.ErrNotExist):
		httpapi.WriteErr(w, fmt.Errorf("%w: %s has no log yet (has the runtime been started? POST /v1/runtime/ensure): %w", httpapi.ErrNotFound, params.Service, err))
		return
	case err != nil:
		httpapi.WriteErr(w, fmt.Errorf("open the %s log: %w", params.Service, err))
		return
	}
	defer f.Close()

	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	var offset int64
	if params.Tail != nil && *params.Tail > 0 {
		data, end, err := lifecycle.Tail(f, *params.Tail)
		if err != nil {
			a.log(r).Warn("tail the log", "service", params.Service, "err", err)
			return
		}
		_, _ = w.Write(data)
		offset = end
	} else {
		n, err := io.Copy(w, f)
		if err != nil {
			return
		}
		offset = n
	}
	if params.Follow == nil || !*params.Follow {
		return
	}
	fw := flushWriter{w: w, rc: http.NewResponseController(w)}
	_ = fw.rc.Flush()
	ctx, cancel := a.streamContext(r)
	defer cancel()
	if err := a.cfg.Runtime.Follow(ctx, params.Service, fw, offset); err != nil {
		a.log(r).Debug("log follow ended", "service", params.Service, "err", err)
	}
}

// flushWriter sends each write to the client at once.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.rc.Flush()
}

// streamContext ends a long-lived response when its client goes away or
// the agent begins to shut down.
func (a *API) streamContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	if a.cfg.Stopping != nil {
		stop := context.AfterFunc(a.cfg.Stopping, cancel)
		return ctx, func() { stop(); cancel() }
	}
	return ctx, cancel
}
