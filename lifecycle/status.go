package lifecycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// requiredBinaries must all be in the runtime bin dir for a start.
var requiredBinaries = []string{"dockerd", "containerd", "containerd-shim-runc-v2", "runc"}

// Service is one service's state in Status.
type Service struct {
	// Name is "containerd", "dockerd", or the data volume's name.
	Name string
	// Status is ServiceReady, ServiceNotReady or ServiceError.
	Status string
	// Detail says what was seen.
	Detail string
}

// Status is the runtime's state, as the API's runtime status reports it.
type Status struct {
	// ContainerdReady reports whether containerd's socket accepts connections.
	ContainerdReady bool
	// DockerReady reports whether dockerd's socket accepts connections.
	DockerReady bool
	// Endpoint is where the host reaches dockerd (Config.Endpoint).
	Endpoint string
	// Detail sums the state up in one line.
	Detail string
	// Services are containerd, dockerd and, when configured, the data volume.
	Services []Service
}

// Status probes the daemons' sockets and reports, with the seed agent's
// detail strings; a ready daemon that was adopted from an earlier agent
// says so. A daemon the Runtime started or adopted that exited without
// being asked to is in ServiceError, with its exit status and last log
// lines, until it is started again.
//
// What the probes saw sets the runtime_ready gauge.
func (r *Runtime) Status(ctx context.Context) Status {
	cfg := &r.cfg
	containerdExits, dockerdExits := r.exitCount(Containerd), r.exitCount(Dockerd)
	st := Status{
		ContainerdReady: cfg.Probe(ctx, Containerd, cfg.ContainerdSocket) == nil,
		DockerReady:     cfg.Probe(ctx, Dockerd, cfg.DockerSocket) == nil,
		Endpoint:        cfg.Endpoint,
	}
	r.setReady(Containerd, st.ContainerdReady, containerdExits)
	r.setReady(Dockerd, st.DockerReady, dockerdExits)
	containerdExit := r.crashed(Containerd)
	dockerdExit := r.crashed(Dockerd)
	dockerSocketExists := exists(cfg.DockerSocket)

	containerd := Service{Name: Containerd}
	switch {
	case st.ContainerdReady:
		containerd.Status = ServiceReady
		containerd.Detail = "socket reachable: " + cfg.ContainerdSocket
	case containerdExit != nil:
		containerd.Status = ServiceError
		containerd.Detail = "exited: " + containerdExit.exitDetail()
	default:
		containerd.Status = ServiceNotReady
		containerd.Detail = "no reachable socket found; checked: " + cfg.ContainerdSocket
	}

	dockerd := Service{Name: Dockerd}
	switch {
	case st.DockerReady:
		dockerd.Status = ServiceReady
		dockerd.Detail = "socket reachable: " + cfg.DockerSocket
	case dockerdExit != nil:
		dockerd.Status = ServiceError
		dockerd.Detail = "exited: " + dockerdExit.exitDetail()
	case dockerSocketExists:
		dockerd.Status = ServiceError
		dockerd.Detail = "socket exists but not reachable: " + cfg.DockerSocket
	default:
		dockerd.Status = ServiceNotReady
		dockerd.Detail = "socket missing: " + cfg.DockerSocket
	}
	for _, s := range []*Service{&containerd, &dockerd} {
		if c := r.running(s.Name); c != nil && c.adopted != nil && s.Status == ServiceReady {
			s.Detail += fmt.Sprintf("; adopted from an earlier agent (pid %d)", c.pid)
		}
	}
	st.Services = []Service{containerd, dockerd}
	if cfg.Volume != nil {
		st.Services = append(st.Services, cfg.Volume.Service())
	}

	switch missing := r.missingBinaries(); {
	case st.DockerReady:
		st.Detail = "docker socket ready"
	case dockerSocketExists:
		st.Detail = "docker socket exists but not reachable: " + cfg.DockerSocket
	case len(missing) > 0:
		st.Detail = fmt.Sprintf("docker socket missing: %s; %s", cfg.DockerSocket, r.missingDetail(missing))
	default:
		st.Detail = "docker socket missing: " + cfg.DockerSocket
	}
	if containerdExit != nil && !st.ContainerdReady {
		st.Detail += fmt.Sprintf("; containerd exited (%s)", containerdExit.exitStatus())
	}
	if dockerdExit != nil && !st.DockerReady {
		st.Detail += fmt.Sprintf("; dockerd exited (%s)", dockerdExit.exitStatus())
	}
	return st
}

// exitCount is how many of service's children (started or adopted) have
// exited so far: taken before a probe, it lets setReady tell whether one
// exited while the probe ran.
func (r *Runtime) exitCount(service string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exits[service]
}

// setReady sets service's runtime_ready gauge from what a probe saw, unless
// one of the service's children exited since exitsBefore (exitCount before
// the probe): the probe may have seen it alive, and supervise set the gauge
// to 0 when it exited, under the same lock, which is the newer truth.
func (r *Runtime) setReady(service string, ready bool, exitsBefore int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.exits[service] != exitsBefore {
		return
	}
	v := 0.0
	if ready {
		v = 1
	}
	r.ready.WithLabelValues(service).Set(v)
}

// running returns the service's latest child while it runs, else nil.
func (r *Runtime) running(service string) *child {
	r.mu.Lock()
	c := r.children[service]
	r.mu.Unlock()
	if c == nil || c.hasExited() {
		return nil
	}
	return c
}

// crashed returns the service's latest child if it exited without being
// asked to, else nil.
func (r *Runtime) crashed(service string) *child {
	r.mu.Lock()
	c := r.children[service]
	r.mu.Unlock()
	if c == nil || !c.hasExited() || c.stopping.Load() {
		return nil
	}
	return c
}

// missingBinaries lists the required binaries absent from the bin dir.
func (r *Runtime) missingBinaries() []string {
	var missing []string
	for _, name := range requiredBinaries {
		if !exists(filepath.Join(r.cfg.RuntimeBinDir, name)) {
			missing = append(missing, name)
		}
	}
	return missing
}

// missingDetail is the seed's runtime_missing_detail_from.
func (r *Runtime) missingDetail(missing []string) string {
	if len(missing) == 0 {
		return "all runtime binaries present under " + r.cfg.RuntimeBinDir
	}
	return fmt.Sprintf("missing runtime binaries under %s: %s", r.cfg.RuntimeBinDir, strings.Join(missing, ", "))
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
