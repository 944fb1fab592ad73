package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// Sandboxes is the part of the sandbox manager the API serves.
type Sandboxes interface {
	Create(ctx context.Context, s sandbox.Spec) (sandbox.Info, bool, error)
	Get(id string) (sandbox.Info, error)
	List(f sandbox.Filter) []sandbox.Info
	Stop(ctx context.Context, id string, timeout time.Duration) (sandbox.Info, error)
	Remove(ctx context.Context, id string, force bool) error
	Run(ctx context.Context, id string, p sandbox.Process, out func(sandbox.Output) error) (int, error)
	Exec(ctx context.Context, id string, p sandbox.Process, eio sandbox.ExecIO, out func(sandbox.Output) error) (int, error)
	Subscribe(f sandbox.EventFilter) *sandbox.Subscription
	Checkpoint(ctx context.Context, id string, req sandbox.CheckpointRequest) (sandbox.Snapshot, error)
	Snapshots(f sandbox.SnapshotFilter) []sandbox.Snapshot
	DeleteSnapshot(ctx context.Context, id string) error
	Restore(ctx context.Context, snapshotID string, req sandbox.RestoreRequest) (sandbox.Info, error)
}

var _ Sandboxes = (*sandbox.Manager)(nil)

// sandboxes returns the manager, or answers 503 with the reason it could
// not start and returns nil.
func (a *API) sandboxes(w http.ResponseWriter, r *http.Request) Sandboxes {
	err := errors.New("not configured")
	if a.cfg.Sandboxes != nil {
		var m Sandboxes
		if m, err = a.cfg.Sandboxes(r.Context()); err == nil {
			return m
		}
	}
	httpapi.WriteError(w, http.StatusServiceUnavailable, "the sandbox backend is unavailable: "+err.Error())
	return nil
}

// writeSandboxErr answers an error of the sandbox manager with the status
// of its class.
func writeSandboxErr(w http.ResponseWriter, err error) {
	httpapi.WriteError(w, sandboxStatus(err), err.Error())
}

func sandboxStatus(err error) int {
	switch {
	case errors.Is(err, sandbox.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, sandbox.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, sandbox.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, sandbox.ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return httpapi.Status(err)
}

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", httpapi.ErrBadRequest, fmt.Sprintf(format, args...))
}

// CreateSandbox creates a sandbox: 202 while it starts, 200 when one with
// this id and this request exists already.
func (a *API) CreateSandbox(w http.ResponseWriter, r *http.Request) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	var req api.CreateSandboxRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	spec, err := specFromRequest(req)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	info, created, err := m.Create(r.Context(), spec)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	status := http.StatusAccepted
	if !created {
		status = http.StatusOK
	} else {
		a.log(r).Info("sandbox created", "sandbox", info.ID)
	}
	httpapi.WriteJSON(w, status, api.CreateSandboxResponse{
		Id:        info.ID,
		IpAddress: optString(info.IPAddress),
		State:     api.SandboxState(info.State),
	})
}

func specFromRequest(req api.CreateSandboxRequest) (sandbox.Spec, error) {
	s := sandbox.Spec{
		ID:           deref(req.Id),
		Labels:       deref(req.Labels),
		Kernel:       deref(req.Kernel),
		Rootfs:       deref(req.Rootfs),
		BootArgs:     deref(req.BootArgs),
		Image:        deref(req.Image),
		Cmd:          deref(req.Cmd),
		Env:          deref(req.Env),
		WorkingDir:   deref(req.WorkingDir),
		User:         deref(req.User),
		SSHPublicKey: deref(req.SshPublicKey),
	}
	if req.Limits != nil {
		if v := deref(req.Limits.Vcpus); v < 0 {
			return s, badRequest(`field "limits.vcpus" must not be negative, got %d`, v)
		}
		if v := deref(req.Limits.MemoryMib); v < 0 {
			return s, badRequest(`field "limits.memory_mib" must not be negative, got %d`, v)
		}
		s.Limits = sandbox.Limits{VCPUs: int(deref(req.Limits.Vcpus)), MemoryMiB: deref(req.Limits.MemoryMib)}
	}
	for _, m := range deref(req.Mounts) {
		s.Mounts = append(s.Mounts, sandbox.Mount{Source: m.Source, Target: m.Target, ReadOnly: deref(m.Readonly)})
	}
	if req.Network != nil && req.Network.Mode != nil {
		s.NetworkMode = string(*req.Network.Mode)
	}
	if ttl := deref(req.TtlSeconds); ttl < 0 {
		return s, badRequest(`field "ttl_seconds" must not be negative, got %d`, ttl)
	} else if ttl > 0 {
		s.TTL = time.Duration(ttl) * time.Second
	}
	return s, nil
}

// ListSandboxes lists the sandboxes that match every filter, oldest first.
func (a *API) ListSandboxes(w http.ResponseWriter, r *http.Request, params api.ListSandboxesParams) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	var f sandbox.Filter
	if params.State != nil {
		f.State = sandbox.State(*params.State)
		if !f.State.Valid() {
			httpapi.WriteErr(w, badRequest(`query parameter "state": %q is not a state; the states are %s`, *params.State, stateNames()))
			return
		}
	}
	labels, err := parseLabels(params.Label)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	f.Labels = labels
	out := api.SandboxList{Sandboxes: []api.SandboxSummary{}}
	for _, info := range m.List(f) {
		out.Sandboxes = append(out.Sandboxes, api.SandboxSummary{
			Id:        info.ID,
			State:     api.SandboxState(info.State),
			Labels:    optMap(info.Labels),
			IpAddress: optString(info.IPAddress),
			CreatedAt: info.CreatedAt.Unix(),
		})
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func stateNames() string {
	names := make([]string, len(sandbox.States))
	for i, s := range sandbox.States {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// parseLabels reads repeated label=key=value query parameters.
func parseLabels(in *[]string) (map[string]string, error) {
	if in == nil || len(*in) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(*in))
	for _, l := range *in {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, badRequest(`query parameter "label": %q is not key=value`, l)
		}
		out[k] = v
	}
	return out, nil
}

// GetSandbox inspects a sandbox.
func (a *API) GetSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	info, err := m.Get(id)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, sandboxInfo(info))
}

func sandboxInfo(info sandbox.Info) api.SandboxInfo {
	out := api.SandboxInfo{
		Id:        info.ID,
		State:     api.SandboxState(info.State),
		Labels:    optMap(info.Labels),
		Limits:    &api.Limits{Vcpus: ptr(int32(info.Limits.VCPUs)), MemoryMib: ptr(info.Limits.MemoryMiB)},
		Network:   &api.SandboxNetwork{Mode: optString(info.NetworkMode), IpAddress: optString(info.IPAddress), Gateway: optString(info.Gateway)},
		CreatedAt: info.CreatedAt.Unix(),
		ReadyAt:   optUnix(info.ReadyAt),
		Error:     optString(info.Error),
	}
	out.LastExitedAt = optUnix(info.LastExitedAt)
	if info.LastExitCode != nil {
		out.LastExitCode = ptr(int32(*info.LastExitCode))
	}
	return out
}

// StopSandbox stops a sandbox: its workload gets timeout_seconds (0: 30 s)
// to end after SIGTERM, then SIGKILL.
func (a *API) StopSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	var req api.StopSandboxRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil && !errors.Is(err, httpapi.ErrEmptyBody) {
		httpapi.WriteErr(w, err)
		return
	}
	t := deref(req.TimeoutSeconds)
	if t < 0 {
		httpapi.WriteErr(w, badRequest(`field "timeout_seconds" must not be negative, got %d`, t))
		return
	}
	info, err := m.Stop(r.Context(), id, time.Duration(t)*time.Second)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("sandbox stopped", "sandbox", id, "state", info.State)
	httpapi.WriteJSON(w, http.StatusOK, sandboxInfo(info))
}

// RemoveSandbox removes a sandbox and all it left on the machine.
func (a *API) RemoveSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.RemoveSandboxParams) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	if err := m.Remove(r.Context(), id, deref(params.Force)); err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("sandbox removed", "sandbox", id)
	w.WriteHeader(http.StatusNoContent)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optMap(m map[string]string) *map[string]string {
	if len(m) == 0 {
		return nil
	}
	return &m
}

func optUnix(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	return ptr(t.Unix())
}

func ptr[T any](v T) *T { return &v }
