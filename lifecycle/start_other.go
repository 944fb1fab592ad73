//go:build !linux

package lifecycle

import (
	"context"
	"os/exec"
	"time"
)

// start fails: the bundled runtime runs only in a Linux guest. Its one
// phase is PhaseEnsure.
func (r *Runtime) start(ctx context.Context, report func(Phase)) EnsureResult {
	began := time.Now()
	st := r.Status(ctx)
	res := EnsureResult{
		Endpoint: st.Endpoint,
		Message:  "the bundled runtime can only be started on Linux; " + st.Detail,
		Status:   StatusFailed,
	}
	if st.DockerReady {
		res = EnsureResult{Ready: true, Endpoint: st.Endpoint, Message: "docker socket already ready; " + st.Detail, Status: StatusReused}
	}
	r.tell(report, Phase{Name: PhaseEnsure, Took: time.Since(began), Status: res.Status})
	return res
}

// setProcAttr does nothing: nothing is spawned off Linux.
func setProcAttr(*exec.Cmd) {}
