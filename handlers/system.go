package handlers

import (
	"net/http"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// maxShutdownGrace bounds grace_seconds, as the contract does.
const maxShutdownGrace = 600

// shutdownRequest is a checked ShutdownRequest.
type shutdownRequest struct {
	action string
	grace  time.Duration
}

// ShutdownSystem begins a clean power-off or reboot and answers 202: the
// agent does the rest after the answer is written (Config.Shutdown).
func (a *API) ShutdownSystem(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeBody(w, r, true, func(in api.ShutdownRequest) (shutdownRequest, error) {
		out := shutdownRequest{action: string(in.Action), grace: a.cfg.DefaultShutdownGrace}
		if in.Action != api.ShutdownRequestActionPoweroff && in.Action != api.ShutdownRequestActionReboot {
			return out, badRequest("action: %q is not poweroff or reboot", in.Action)
		}
		if in.GraceSeconds != nil {
			g := *in.GraceSeconds
			if g < 0 || g > maxShutdownGrace {
				return out, badRequest("grace_seconds: %d is not from 0 to %d", g, maxShutdownGrace)
			}
			out.grace = time.Duration(g) * time.Second
		}
		return out, nil
	})
	if !ok {
		return
	}
	if a.cfg.Shutdown == nil {
		httpapi.WriteError(w, http.StatusServiceUnavailable, "this agent cannot shut the system down: not configured")
		return
	}
	begin, err := a.cfg.Shutdown(req.action, req.grace)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	a.log(r).Info("shutdown requested", "action", req.action, "grace", req.grace)
	httpapi.WriteJSON(w, http.StatusAccepted, api.ShutdownResponse{
		Action:       api.ShutdownResponseAction(req.action),
		GraceSeconds: int32(req.grace / time.Second),
	})
	// The answer goes out before the shutdown closes the listeners: the
	// client learns its order was taken even with a grace of 0.
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	begin()
}
