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

// SandboxManager is the part of the sandbox manager the API serves.
type SandboxManager interface {
	Create(ctx context.Context, s sandbox.Spec) (sandbox.Info, bool, error)
	Get(id string) (sandbox.Info, error)
	List(f sandbox.Filter) []sandbox.Info
	Stop(ctx context.Context, id string, timeout time.Duration) (sandbox.Info, error)
	Remove(ctx context.Context, id string, force bool) error
	Run(ctx context.Context, id string, p sandbox.Process, out func(sandbox.Output) error) (int, error)
	Exec(ctx context.Context, id string, p sandbox.Process, stdio sandbox.ExecIO, out func(sandbox.Output) error) (int, error)
	Checkpoint(ctx context.Context, id string, req sandbox.CheckpointRequest) (sandbox.Snapshot, error)
	Snapshots(f sandbox.SnapshotFilter) []sandbox.Snapshot
	DeleteSnapshot(ctx context.Context, id string) error
	Restore(ctx context.Context, snapshotID string, req sandbox.RestoreRequest) (sandbox.Info, error)

	// Runs by id: /v1/sandboxes/{id}/runs...
	StartRun(id string, req sandbox.RunRequest) (sandbox.RunInfo, error)
	Runs(id string) ([]sandbox.RunInfo, error)
	GetRun(id, runID string) (sandbox.RunInfo, error)
	ReadRunOutput(ctx context.Context, id, runID string, offset int64, follow bool, fn func([]sandbox.OutputChunk) error) (sandbox.RunInfo, error)
	SignalRun(ctx context.Context, id, runID string, sig sandbox.Signal) error
	WriteRunStdin(ctx context.Context, id, runID string, data []byte, closeAfter bool) error

	// Files opens a sandbox's file tree for one request: /v1/sandboxes/{id}/files...
	Files(id string, write bool) (sandbox.FileTree, error)
	// Stats reads a sandbox's resource use: /v1/sandboxes/{id}/stats.
	Stats(ctx context.Context, id string) (sandbox.Stats, error)
	// ImageConfig is the config of the image a sandbox was made from, nil
	// when none; ResolveCmd gives a process without cmd the image's.
	ImageConfig(id string) (*sandbox.ImageConfig, error)
	ResolveCmd(id string, p sandbox.Process) (sandbox.Process, error)
}

var _ SandboxManager = (*sandbox.Manager)(nil)

// manager returns the sandbox manager, or answers 503 with the reason it
// could not start and returns nil.
func (a *API) manager(w http.ResponseWriter, r *http.Request) SandboxManager {
	err := errors.New("not configured")
	if a.cfg.SandboxManager != nil {
		var m SandboxManager
		if m, err = a.cfg.SandboxManager(r.Context()); err == nil {
			return m
		}
	}
	httpapi.WriteError(w, http.StatusServiceUnavailable, "the sandbox backend is unavailable: "+err.Error())
	return nil
}

// retryAfterBusy is the Retry-After, in seconds, of a 429: the queues
// drain in about that long.
const retryAfterBusy = "1"

// writeSandboxErr answers an error of the sandbox manager with the status
// of its class, and a 429 with when to retry.
func writeSandboxErr(w http.ResponseWriter, err error) {
	status := sandboxStatus(err)
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", retryAfterBusy)
	}
	httpapi.WriteError(w, status, err.Error())
}

// sandboxStatus maps the sandbox manager's error classes to statuses, the
// same on every endpoint.
func sandboxStatus(err error) int {
	switch {
	case errors.Is(err, sandbox.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, sandbox.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, sandbox.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, sandbox.ErrNoSpace):
		return http.StatusInsufficientStorage
	case errors.Is(err, sandbox.ErrBusy):
		return http.StatusTooManyRequests
	case errors.Is(err, sandbox.ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return httpapi.Status(err)
}

// decodeBody decodes a request's body into a Req, an absent one being the
// zero Req unless required, and checks it into what the domain takes with
// check; false when it has answered with the error.
func decodeBody[Req, Out any](w http.ResponseWriter, r *http.Request, required bool, check func(Req) (Out, error)) (Out, bool) {
	var req Req
	var err error
	if required {
		err = httpapi.DecodeRequiredJSON(r, &req)
	} else if err = httpapi.DecodeJSON(r, &req); errors.Is(err, httpapi.ErrEmptyBody) {
		err = nil
	}
	var out Out
	if err == nil {
		out, err = check(req)
	}
	if err != nil {
		httpapi.WriteErr(w, err)
		return out, false
	}
	return out, true
}

func badRequest(format string, args ...any) error {
	return httpapi.Errorf(httpapi.ErrBadRequest, format, args...)
}

// CreateSandbox creates a sandbox: 202 while it starts, 200 when one with
// this id and this request exists already.
func (a *API) CreateSandbox(w http.ResponseWriter, r *http.Request) {
	spec, ok := decodeBody(w, r, true, specFromRequest)
	if !ok {
		return
	}
	m := a.manager(w, r)
	if m == nil {
		return
	}
	info, created, err := m.Create(r.Context(), spec)
	if err != nil {
		writeSandboxErr(w, redactCredentials(err, spec.RegistryAuth))
		return
	}
	status := http.StatusAccepted
	if !created {
		status = http.StatusOK
	} else {
		// The spec's RegistryAuth is never logged: only what says who
		// the sandbox is and how it is confined.
		a.log(r).Info("sandbox created", "sandbox", info.ID, "user_namespace", !spec.Security.HostUsers,
			"read_only_rootfs", spec.Security.ReadOnlyRootfs)
	}
	httpapi.WriteJSON(w, status, api.CreateSandboxResponse{
		Id:        info.ID,
		IpAddress: optString(info.IPAddress),
		State:     api.SandboxState(info.State),
	})
}

// specFromRequest checks a create request against the contract and makes
// it a spec.
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
	if req.Id != nil {
		if err := idRule.check(fieldName("id"), s.ID); err != nil {
			return s, err
		}
	}
	if err := checkLabels(fieldName("labels"), s.Labels); err != nil {
		return s, err
	}
	if err := rootfsRule.check(fieldName("rootfs"), s.Rootfs); err != nil {
		return s, err
	}
	if req.Limits != nil {
		l, err := limitsFromRequest(*req.Limits)
		if err != nil {
			return s, err
		}
		s.Limits = l
	}
	if err := checkCmd("cmd", s.Cmd, false); err != nil {
		return s, err
	}
	if err := checkEnv("env", s.Env); err != nil {
		return s, err
	}
	if err := dirRule.check(fieldName("working_dir"), s.WorkingDir); err != nil {
		return s, err
	}
	if err := userRule.check(fieldName("user"), s.User); err != nil {
		return s, err
	}
	for i, m := range deref(req.Mounts) {
		if err := mountSourceRule.check(fieldName(fmt.Sprintf("mounts[%d].source", i)), m.Source); err != nil {
			return s, err
		}
		if err := mountTargetRule.check(fieldName(fmt.Sprintf("mounts[%d].target", i)), m.Target); err != nil {
			return s, err
		}
		s.Mounts = append(s.Mounts, sandbox.Mount{Source: m.Source, Target: m.Target, ReadOnly: deref(m.Readonly)})
	}
	if req.Network != nil {
		mode, err := networkMode("network.mode", *req.Network)
		if err != nil {
			return s, err
		}
		s.NetworkMode = mode
	}
	ttl, err := checkSeconds(fieldName("ttl_seconds"), deref(req.TtlSeconds), maxTTLSeconds, "30 days")
	if err != nil {
		return s, err
	}
	s.TTL = ttl
	if req.Security != nil {
		s.Security = sandbox.Security{
			HostUsers:      req.Security.UserNamespace != nil && !*req.Security.UserNamespace,
			ReadOnlyRootfs: deref(req.Security.ReadOnlyRootfs),
		}
	}
	if req.RegistryAuth != nil {
		auth, err := registryAuthFromRequest(*req.RegistryAuth)
		if err != nil {
			return s, err
		}
		if s.Image == "" {
			return s, badRequest(`field "registry_auth" is only for an image pull: give "image" too, or leave it out`)
		}
		s.RegistryAuth = auth
	}
	return s, nil
}

// redactedError is an error whose message had credentials taken out; it
// keeps the original's class for the status.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactCredentials takes a create's secrets out of an error's message
// before it is answered: a pull's error may quote what a registry sent
// back, and that is no place for them.
func redactCredentials(err error, auth *sandbox.RegistryAuth) error {
	if auth == nil {
		return err
	}
	msg := err.Error()
	for _, secret := range []string{auth.Password, auth.IdentityToken, auth.RegistryToken} {
		if secret != "" {
			msg = strings.ReplaceAll(msg, secret, "[redacted]")
		}
	}
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

// registryAuthFromRequest checks a create's registry credentials: one
// kind of them, each not empty and not too long. Its errors name fields
// and never hold a value.
func registryAuthFromRequest(a api.RegistryAuth) (*sandbox.RegistryAuth, error) {
	fields := []struct {
		name string
		v    *string
	}{{"username", a.Username}, {"password", a.Password}, {"identity_token", a.IdentityToken}, {"registry_token", a.RegistryToken}}
	given := 0
	for _, f := range fields {
		if f.v == nil {
			continue
		}
		given++
		field := "registry_auth." + f.name
		if *f.v == "" {
			return nil, badRequest("field %q is empty", field)
		}
		if err := checkName(field, *f.v, maxCredential); err != nil {
			return nil, err
		}
	}
	secrets := 0
	for _, v := range []*string{a.Password, a.IdentityToken, a.RegistryToken} {
		if v != nil {
			secrets++
		}
	}
	switch {
	case given == 0:
		return nil, badRequest(`field "registry_auth" is empty: give "username" and "password", or "identity_token", or "registry_token"`)
	case (a.Username == nil) != (a.Password == nil):
		return nil, badRequest(`field "registry_auth": "username" and "password" come together`)
	case secrets > 1:
		return nil, badRequest(`field "registry_auth": give only one of "password", "identity_token" and "registry_token"`)
	}
	return &sandbox.RegistryAuth{Username: deref(a.Username), Password: deref(a.Password),
		IdentityToken: deref(a.IdentityToken), RegistryToken: deref(a.RegistryToken)}, nil
}

func limitsFromRequest(l api.Limits) (sandbox.Limits, error) {
	vcpus, mem, pids := deref(l.Vcpus), deref(l.MemoryMib), deref(l.Pids)
	if err := checkRange(fieldName("limits.vcpus"), int64(vcpus), 0, maxVCPUs, "1024 CPUs"); err != nil {
		return sandbox.Limits{}, err
	}
	if err := checkRange(fieldName("limits.memory_mib"), mem, 0, maxMemoryMiB, "1 TiB"); err != nil {
		return sandbox.Limits{}, err
	}
	if mem > 0 && mem < minMemoryMiB {
		return sandbox.Limits{}, badRequest(`field "limits.memory_mib" must be 0 (the default) or at least %d, got %d`, minMemoryMiB, mem)
	}
	if err := checkRange(fieldName("limits.pids"), pids, 0, maxPids, "the kernel's PID_MAX_LIMIT"); err != nil {
		return sandbox.Limits{}, err
	}
	if pids > 0 && pids < minPids {
		return sandbox.Limits{}, badRequest(`field "limits.pids" must be 0 (the default) or at least %d, got %d`, minPids, pids)
	}
	return sandbox.Limits{VCPUs: int(vcpus), MemoryMiB: mem, Pids: pids}, nil
}

// networkMode checks a network mode against the contract's enum.
func networkMode(field string, n api.NetworkSpec) (string, error) {
	if n.Mode == nil {
		return "", nil
	}
	if !n.Mode.Valid() {
		return "", badRequest("field %q: %s is not a mode; the modes are none, bridge and tap (bridge's alias)", field, quoteShort(string(*n.Mode)))
	}
	return string(*n.Mode), nil
}

// ListSandboxes lists the sandboxes that match every filter, oldest first.
func (a *API) ListSandboxes(w http.ResponseWriter, r *http.Request, params api.ListSandboxesParams) {
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
	m := a.manager(w, r)
	if m == nil {
		return
	}
	out := api.SandboxList{Sandboxes: []api.SandboxSummary{}}
	for _, info := range m.List(f) {
		out.Sandboxes = append(out.Sandboxes, api.SandboxSummary{
			Id:        info.ID,
			State:     api.SandboxState(info.State),
			Labels:    optMap(info.Labels),
			IpAddress: optString(info.IPAddress),
			CreatedAt: info.CreatedAt.Unix(),
			Security:  securityInfo(info.Security),
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
		if err := labelFilterRule.check(`query parameter "label"`, l); err != nil {
			return nil, err
		}
		k, v, _ := strings.Cut(l, "=")
		out[k] = v
	}
	return out, nil
}

// checkPathID answers a 400 naming the path parameter when id is no id,
// and reports whether it did.
func checkPathID(w http.ResponseWriter, id string) bool {
	if err := idRule.check(`path parameter "id"`, id); err != nil {
		httpapi.WriteErr(w, err)
		return false
	}
	return true
}

// GetSandbox inspects a sandbox.
func (a *API) GetSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	if !checkPathID(w, id) {
		return
	}
	m := a.manager(w, r)
	if m == nil {
		return
	}
	info, err := m.Get(id)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	out := sandboxInfo(info)
	out.ImageConfig = a.imageConfig(r, m, id)
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func sandboxInfo(info sandbox.Info) api.SandboxInfo {
	out := api.SandboxInfo{
		Id:        info.ID,
		State:     api.SandboxState(info.State),
		Labels:    optMap(info.Labels),
		Limits:    &api.Limits{Vcpus: ptr(int32(info.Limits.VCPUs)), MemoryMib: ptr(info.Limits.MemoryMiB), Pids: ptr(info.Limits.Pids)},
		Network:   &api.SandboxNetwork{Mode: optString(info.NetworkMode), IpAddress: optString(info.IPAddress), Gateway: optString(info.Gateway)},
		CreatedAt: info.CreatedAt.Unix(),
		ReadyAt:   optUnix(info.ReadyAt),
		Error:     optString(info.Error),
		Security:  securityInfo(info.Security),
	}
	out.LastExitedAt = optUnix(info.LastExitedAt)
	if info.LastExitCode != nil {
		out.LastExitCode = ptr(int32(*info.LastExitCode))
	}
	return out
}

// securityInfo is how a sandbox is confined, in every answer about it, so
// that a list shows which sandboxes run without a user namespace.
func securityInfo(s sandbox.SecurityInfo) *api.SandboxSecurity {
	out := &api.SandboxSecurity{
		UserNamespace:   s.UserNamespace,
		ReadOnlyRootfs:  s.ReadOnlyRootfs,
		NoNewPrivileges: s.NoNewPrivileges,
		Seccomp:         s.Seccomp,
		Capabilities:    s.Capabilities,
	}
	if out.Capabilities == nil {
		out.Capabilities = []string{}
	}
	if s.UserNamespace && s.IDMap.Size > 0 {
		out.IdMap = &api.IDMap{HostId: s.IDMap.HostID, Size: s.IDMap.Size}
	}
	return out
}

// StopSandbox stops a sandbox: its workload gets timeout_seconds (0: 30 s)
// to end after SIGTERM, then SIGKILL.
func (a *API) StopSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	if !checkPathID(w, id) {
		return
	}
	timeout, ok := decodeBody(w, r, false, func(req api.StopSandboxRequest) (time.Duration, error) {
		return checkSeconds(fieldName("timeout_seconds"), deref(req.TimeoutSeconds), maxStopTimeoutSeconds, "an hour")
	})
	if !ok {
		return
	}
	m := a.manager(w, r)
	if m == nil {
		return
	}
	info, err := m.Stop(r.Context(), id, timeout)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("sandbox stopped", "sandbox", id, "state", info.State)
	out := sandboxInfo(info)
	out.ImageConfig = a.imageConfig(r, m, id)
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// RemoveSandbox removes a sandbox and all it left on the machine.
func (a *API) RemoveSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.RemoveSandboxParams) {
	if !checkPathID(w, id) {
		return
	}
	m := a.manager(w, r)
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
