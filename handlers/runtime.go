package handlers

import (
	"context"
	"encoding/json"
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
// means start_if_needed: true. It answers one JSON object or, when Accept
// asks for NDJSON, streams the phases of the start it waits for, then the
// answer. Either way the request's context only ends the wait: a client
// that goes away leaves the start going on.
func (a *API) EnsureRuntime(w http.ResponseWriter, r *http.Request) {
	var req api.RuntimeEnsureRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil && !errors.Is(err, httpapi.ErrEmptyBody) {
		httpapi.WriteErr(w, err)
		return
	}
	start := req.StartIfNeeded == nil || *req.StartIfNeeded
	if prefersNDJSON(r) {
		a.streamEnsure(w, r, start)
		return
	}
	res := a.cfg.Runtime.Ensure(r.Context(), start)
	a.logEnsure(r, start, res)
	httpapi.WriteJSON(w, http.StatusOK, ensureResponse(res))
}

// maxPhases bounds the phases of one start (lifecycle's five), so a
// channel of this size takes every one without blocking the start.
const maxPhases = 8

// streamEnsure answers an ensure as NDJSON: a line per phase of the start
// the call waits for, as it ends, then the answer's line. The start tells
// its phases to a buffered channel, never to the connection, so a slow
// client holds up only its own lines.
func (a *API) streamEnsure(w http.ResponseWriter, r *http.Request, start bool) {
	phases := make(chan lifecycle.Phase, maxPhases)
	ctx := lifecycle.WithPhaseWatch(r.Context(), func(p lifecycle.Phase) {
		select {
		case phases <- p:
		default: // more than a start has: dropped rather than wait
		}
	})
	done := make(chan lifecycle.EnsureResult, 1)
	go func() { done <- a.cfg.Runtime.Ensure(ctx, start) }()

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	write := func(line api.RuntimeEnsureProgress) {
		b, _ := json.Marshal(line) // plain structs: it cannot fail
		if _, err := w.Write(append(b, '\n')); err == nil {
			_ = rc.Flush()
		}
	}
	for {
		select {
		case p := <-phases:
			write(phaseLine(p))
		case res := <-done:
			// Every phase was told before Ensure returned.
			for len(phases) > 0 {
				write(phaseLine(<-phases))
			}
			a.logEnsure(r, start, res)
			resp := ensureResponse(res)
			write(api.RuntimeEnsureProgress{Result: &resp})
			return
		}
	}
}

// logEnsure logs an ensure's answer: a warning when a start was asked for
// and the runtime is not ready.
func (a *API) logEnsure(r *http.Request, start bool, res lifecycle.EnsureResult) {
	log := a.log(r)
	if res.Status == lifecycle.StatusFailed && start {
		log.Warn("runtime ensure failed", "message", res.Message)
	} else {
		log.Info("runtime ensure", "status", res.Status, "start_if_needed", start)
	}
}

func ensureResponse(res lifecycle.EnsureResult) api.RuntimeEnsureResponse {
	return api.RuntimeEnsureResponse{
		Ready:    res.Ready,
		Endpoint: res.Endpoint,
		Message:  res.Message,
		Status:   api.RuntimeEnsureResponseStatus(res.Status),
	}
}

func phaseLine(p lifecycle.Phase) api.RuntimeEnsureProgress {
	line := api.RuntimeEnsureProgress{
		Phase:  ptr(api.RuntimeEnsureProgressPhase(p.Name)),
		TookMs: ptr(max(p.Took.Milliseconds(), 0)),
	}
	if p.Status != "" {
		line.Status = ptr(api.RuntimeEnsureProgressStatus(p.Status))
	}
	return line
}

// prefersNDJSON says whether r's Accept names application/x-ndjson, with
// a q-value above 0 and no lower than application/json's. Wildcards choose
// nothing: without a word of NDJSON the answer is JSON, as it always was.
func prefersNDJSON(r *http.Request) bool {
	ndjson, plain := acceptQ(r, "application/x-ndjson"), acceptQ(r, "application/json")
	return ndjson > 0 && ndjson >= plain
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
