package handlers

import (
	"net/http"

	"github.com/arcbox/arcbox-agent/api"
)

// The sandbox operations are part of the contract; their backend is built
// in its own issue and answers 501 until then.

// CreateSandbox creates a sandbox.
func (a *API) CreateSandbox(w http.ResponseWriter, r *http.Request) { notImplemented(w, r) }

// ListSandboxes lists sandboxes.
func (a *API) ListSandboxes(w http.ResponseWriter, r *http.Request, _ api.ListSandboxesParams) {
	notImplemented(w, r)
}

// GetSandbox inspects a sandbox.
func (a *API) GetSandbox(w http.ResponseWriter, r *http.Request, _ api.SandboxID) {
	notImplemented(w, r)
}

// RemoveSandbox removes a sandbox.
func (a *API) RemoveSandbox(w http.ResponseWriter, r *http.Request, _ api.SandboxID, _ api.RemoveSandboxParams) {
	notImplemented(w, r)
}

// StopSandbox stops a sandbox.
func (a *API) StopSandbox(w http.ResponseWriter, r *http.Request, _ api.SandboxID) {
	notImplemented(w, r)
}

// RunInSandbox runs a command and streams NDJSON.
func (a *API) RunInSandbox(w http.ResponseWriter, r *http.Request, _ api.SandboxID) {
	notImplemented(w, r)
}

// RunInSandboxWebSocket runs a command over a WebSocket.
func (a *API) RunInSandboxWebSocket(w http.ResponseWriter, r *http.Request, _ api.SandboxID) {
	notImplemented(w, r)
}

// ExecInSandbox is the interactive exec WebSocket.
func (a *API) ExecInSandbox(w http.ResponseWriter, r *http.Request, _ api.SandboxID) {
	notImplemented(w, r)
}

// CheckpointSandbox snapshots a sandbox.
func (a *API) CheckpointSandbox(w http.ResponseWriter, r *http.Request, _ api.SandboxID) {
	notImplemented(w, r)
}

// ListSnapshots lists snapshots.
func (a *API) ListSnapshots(w http.ResponseWriter, r *http.Request, _ api.ListSnapshotsParams) {
	notImplemented(w, r)
}

// DeleteSnapshot deletes a snapshot.
func (a *API) DeleteSnapshot(w http.ResponseWriter, r *http.Request, _ api.SnapshotID) {
	notImplemented(w, r)
}

// RestoreSnapshot restores a snapshot into a new sandbox.
func (a *API) RestoreSnapshot(w http.ResponseWriter, r *http.Request, _ api.SnapshotID) {
	notImplemented(w, r)
}

// StreamEvents streams lifecycle events.
func (a *API) StreamEvents(w http.ResponseWriter, r *http.Request, _ api.StreamEventsParams) {
	notImplemented(w, r)
}
