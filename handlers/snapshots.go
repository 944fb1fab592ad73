package handlers

import (
	"net/http"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// CheckpointSandbox snapshots a ready sandbox's files and request: 201
// with the snapshot.
func (a *API) CheckpointSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	if !checkPathID(w, id) {
		return
	}
	cr, ok := decodeBody(w, r, false, checkpointFromRequest)
	if !ok {
		return
	}
	m := a.manager(w, r)
	if m == nil {
		return
	}
	snap, err := m.Checkpoint(r.Context(), id, cr)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("sandbox checkpointed", "sandbox", id, "snapshot", snap.ID)
	httpapi.WriteJSON(w, http.StatusCreated, api.CheckpointResponse{
		SnapshotId:  snap.ID,
		SnapshotDir: snap.Dir,
		CreatedAt:   snap.CreatedAt.Unix(),
	})
}

// checkpointFromRequest checks a checkpoint request against the contract.
func checkpointFromRequest(req api.CheckpointRequest) (sandbox.CheckpointRequest, error) {
	cr := sandbox.CheckpointRequest{Name: deref(req.Name), Labels: deref(req.Labels)}
	if err := checkName("name", cr.Name, maxSnapshotName); err != nil {
		return cr, err
	}
	return cr, checkLabels(fieldName("labels"), cr.Labels)
}

// ListSnapshots lists the snapshots that match every filter, oldest first.
func (a *API) ListSnapshots(w http.ResponseWriter, r *http.Request, params api.ListSnapshotsParams) {
	if params.SandboxId != nil {
		if err := idRule.check(`query parameter "sandbox_id"`, *params.SandboxId); err != nil {
			httpapi.WriteErr(w, err)
			return
		}
	}
	labels, err := parseLabels(params.Label)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	m := a.manager(w, r)
	if m == nil {
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
			CreatedAt:   s.CreatedAt.Unix(),
		})
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// DeleteSnapshot deletes a snapshot and its files.
func (a *API) DeleteSnapshot(w http.ResponseWriter, r *http.Request, id api.SnapshotID) {
	if !checkPathID(w, id) {
		return
	}
	m := a.manager(w, r)
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
	if !checkPathID(w, id) {
		return
	}
	rr, ok := decodeBody(w, r, false, restoreFromRequest)
	if !ok {
		return
	}
	m := a.manager(w, r)
	if m == nil {
		return
	}
	info, err := m.Restore(r.Context(), id, rr)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("snapshot restored", "snapshot", id, "sandbox", info.ID)
	httpapi.WriteJSON(w, http.StatusCreated, api.RestoreResponse{Id: info.ID, IpAddress: optString(info.IPAddress)})
}

// restoreFromRequest checks a restore request against the contract. An
// absent field keeps the original's; labels {} clear them.
func restoreFromRequest(req api.RestoreRequest) (sandbox.RestoreRequest, error) {
	rr := sandbox.RestoreRequest{ID: deref(req.Id)}
	if req.Id != nil {
		if err := idRule.check(fieldName("id"), rr.ID); err != nil {
			return rr, err
		}
	}
	if req.Labels != nil {
		if err := checkLabels(fieldName("labels"), *req.Labels); err != nil {
			return rr, err
		}
		rr.Labels = *req.Labels // present, even {}: replaces the original's
	}
	if req.NetworkOverride != nil {
		mode, err := networkMode("network_override.mode", *req.NetworkOverride)
		if err != nil {
			return rr, err
		}
		rr.NetworkMode = mode
	}
	if req.TtlSeconds != nil {
		ttl, err := checkSeconds(fieldName("ttl_seconds"), *req.TtlSeconds, maxTTLSeconds, "30 days")
		if err != nil {
			return rr, err
		}
		rr.TTL = &ttl
	}
	return rr, nil
}
