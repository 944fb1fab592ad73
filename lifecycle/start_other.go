//go:build !linux

package lifecycle

import (
	"context"
	"os/exec"
)

// start fails: the bundled runtime runs only in a Linux guest.
func (r *Runtime) start(ctx context.Context) EnsureResult {
	st := r.Status(ctx)
	if st.DockerReady {
		return EnsureResult{Ready: true, Endpoint: st.Endpoint, Message: "docker socket already ready; " + st.Detail, Status: StatusReused}
	}
	return EnsureResult{
		Endpoint: st.Endpoint,
		Message:  "the bundled runtime can only be started on Linux; " + st.Detail,
		Status:   StatusFailed,
	}
}

// setProcAttr does nothing: nothing is spawned off Linux.
func setProcAttr(*exec.Cmd) {}
