package handlers

import (
	"errors"
	"net/http"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// CheckpointSandbox snapshots a ready sandbox's files and request: 201
// with the snapshot.
func (a *API) CheckpointSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	var req api.CheckpointRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil && !errors.Is(err, httpapi.ErrEmptyBody) {
		httpapi.WriteErr(w, err)
		return
	}
	snap, err := m.Checkpoint(r.Context(), id, sandbox.CheckpointRequest{Name: deref(req.Name), Labels: deref(req.Labels)})
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("sandbox checkpointed", "sandbox", id, "snapshot", snap.ID)
	httpapi.WriteJSON(w, http.StatusCreated, api.CheckpointResponse{
		SnapshotId:  snap.ID,
		SnapshotDir: snap.Dir,
		CreatedAt:   snap.CreatedAt.UTC(),
	})
}

// ListSnapshots lists the snapshots that match every filter, oldest first.
func (a *API) ListSnapshots(w http.ResponseWriter, r *http.Request, params api.ListSnapshotsParams) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	labels, err := parseLabels(params.Label)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	out := api.SnapshotList{Snapshots: []api.Snapshot{}}
	for _, s := range m.Snapshots(sandbox.SnapshotFilter{SandboxID: deref(params.SandboxId), Labels: labels}) {
		out.Snapshots = append(out.Snapshots, api.Snapshot{
			Id:          s.ID,
			SandboxId:   s.SandboxID,
			Name:        optString(s.Name),
			Labels:      optMap(s.Labels),
			SnapshotDir: s.Dir,
			CreatedAt:   s.CreatedAt.UTC(),
		})
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// DeleteSnapshot deletes a snapshot and its files.
func (a *API) DeleteSnapshot(w http.ResponseWriter, r *http.Request, id api.SnapshotID) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	if err := m.DeleteSnapshot(r.Context(), id); err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("snapshot deleted", "snapshot", id)
	w.WriteHeader(http.StatusNoContent)
}

// RestoreSnapshot makes a new sandbox from a snapshot: 201 once it is ready.
func (a *API) RestoreSnapshot(w http.ResponseWriter, r *http.Request, id api.SnapshotID) {
	m := a.sandboxes(w, r)
	if m == nil {
		return
	}
	var req api.RestoreRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil && !errors.Is(err, httpapi.ErrEmptyBody) {
		httpapi.WriteErr(w, err)
		return
	}
	rr := sandbox.RestoreRequest{ID: deref(req.Id)}
	if req.Labels != nil {
		rr.Labels = *req.Labels
		if rr.Labels == nil {
			rr.Labels = map[string]string{} // "labels": null clears them too
		}
	}
	if req.NetworkOverride != nil && req.NetworkOverride.Mode != nil {
		rr.NetworkMode = string(*req.NetworkOverride.Mode)
	}
	if req.TtlSeconds != nil {
		if *req.TtlSeconds < 0 {
			httpapi.WriteErr(w, badRequest(`field "ttl_seconds" must not be negative, got %d`, *req.TtlSeconds))
			return
		}
		rr.TTL = ptr(time.Duration(*req.TtlSeconds) * time.Second)
	}
	info, err := m.Restore(r.Context(), id, rr)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("snapshot restored", "snapshot", id, "sandbox", info.ID)
	httpapi.WriteJSON(w, http.StatusCreated, api.RestoreResponse{Id: info.ID, IpAddress: optString(info.IPAddress)})
}
