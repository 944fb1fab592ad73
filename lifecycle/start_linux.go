package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/arcbox/arcbox-agent/disk"
)

// containerdConfig disables the CRI plugin, which Docker does not need;
// containerd has no flag for it, only its configuration file.
const containerdConfig = "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"

// standardPath is appended to the daemons' PATH so they find modprobe,
// mount and the like.
const standardPath = "/usr/sbin:/usr/bin:/sbin:/bin"

// setProcAttr puts a daemon in a process group of its own, so signals
// meant for the agent's group (a terminal's ^C) do not reach it.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// start is the seed agent's do_ensure_runtime_start: start what is down,
// wait for dockerd, and report. It runs with the Runtime's lifetime, not a
// request's context, and tells report each phase as it ends, PhaseEnsure
// last.
func (r *Runtime) start(ctx context.Context, report func(Phase)) EnsureResult {
	began := time.Now()
	r.log.Info("runtime start")
	notes, failure, spawned := r.startDaemons(ctx, report)
	st := r.Status(ctx)

	var parts []string
	for _, n := range notes {
		if n != "" && !strings.Contains(st.Detail, n) {
			parts = append(parts, n)
		}
	}
	parts = append(parts, st.Detail)
	if failure != "" && !st.DockerReady {
		parts = append(parts, failure)
	}
	res := EnsureResult{
		Ready:    st.DockerReady,
		Endpoint: st.Endpoint,
		Message:  strings.Join(parts, "; "),
		Status:   StatusFailed,
	}
	took := time.Since(began)
	if st.DockerReady {
		// What really happened: a start that found every daemon serving
		// (adopted, or not the agent's) started nothing.
		res.Status = StatusReused
		if spawned {
			res.Status = StatusStarted
		}
		// The metric is of the starts that ended ready; the phase is
		// told of every start.
		r.observe(PhaseEnsure, began)
		r.log.Info("runtime ready", "took", took.Round(time.Millisecond).String(), "message", res.Message)
	} else {
		r.log.Warn("runtime start failed", "took", took.Round(time.Millisecond).String(), "message", res.Message)
	}
	r.tell(report, Phase{Name: PhaseEnsure, Took: took, Status: res.Status})
	return res
}

// startDaemons is the seed agent's try_start_bundled_runtime followed by
// its wait for dockerd, after adopting what an earlier agent left running,
// telling report each phase that ends. It returns notes on what it did,
// whether it spawned a daemon and, when a daemon did not come up, why,
// ending with that daemon's last log lines.
// It stops early (missing binaries, a failed data volume, a daemon that
// could not be spawned or exited) instead of waiting out a deadline that
// cannot help.
func (r *Runtime) startDaemons(ctx context.Context, report func(Phase)) (notes []string, failure string, spawned bool) {
	cfg := &r.cfg
	r.adoptStrays(ctx)
	notes = r.adoptedNotes()
	if cfg.Probe(ctx, Dockerd, cfg.DockerSocket) == nil {
		// Unless containerd is down under a dockerd of the agent's (its
		// child or adopted), or a containerd of its own died: then
		// containerd is started again below, and dockerd left alone.
		ours := r.running(Dockerd) != nil || r.crashed(Containerd) != nil
		if !ours || cfg.Probe(ctx, Containerd, cfg.ContainerdSocket) == nil {
			return append(notes, "docker socket already ready"), "", false
		}
	}
	if missing := r.missingBinaries(); len(missing) > 0 {
		return append(notes, r.missingDetail(missing)), "", false
	}
	r.log.Info("starting bundled runtime", "runtime_bin_dir", cfg.RuntimeBinDir)

	if cfg.PrepareSystem {
		t := time.Now()
		pre := r.prepareSystem(ctx)
		if len(pre) > 0 {
			r.log.Info("runtime prerequisites", "notes", strings.Join(pre, "; "))
		}
		notes = append(notes, pre...)
		r.endPhase(report, PhasePrerequisites, t)
	}

	if cfg.Volume != nil {
		t := time.Now()
		note, err := cfg.Volume.Ensure(ctx)
		if err != nil {
			return append(notes, fmt.Sprintf("data volume setup failed: %v", err)), "", false
		}
		if note != "" {
			notes = append(notes, note)
		}
		r.endPhase(report, PhaseDataVolume, t)
	}

	for _, dir := range []string{
		cfg.ContainerdState, cfg.DockerExecRoot, cfg.LogDir,
		filepath.Dir(cfg.ContainerdSocket), filepath.Dir(cfg.DockerSocket), filepath.Dir(cfg.ContainerdConfig),
	} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			notes = append(notes, fmt.Sprintf("mkdir %s failed(%v)", dir, err))
		}
	}
	env := daemonEnv(cfg.RuntimeBinDir)
	if disk.RootIsInitramfs() {
		// pivot_root fails on an initramfs: dockerd then has its
		// containers' runtime chroot instead (its documented switch).
		env = append(env, "DOCKER_RAMDISK=true")
	}

	// containerd. A socket that does not come up in time is only a note:
	// dockerd waits for containerd itself. An exit is the end of it.
	note, c, fresh, err := r.ensureDaemon(ctx, Containerd, cfg.ContainerdSocket, func() (string, []string) {
		if err := os.WriteFile(cfg.ContainerdConfig, []byte(containerdConfig), 0o644); err != nil {
			notes = append(notes, fmt.Sprintf("write containerd config failed(%v)", err))
		}
		binary, socketArgs := r.identity(Containerd) // "--address", the socket
		args := append([]string{"--config", cfg.ContainerdConfig}, socketArgs...)
		return binary, append(args, "--state", cfg.ContainerdState, "--root", cfg.ContainerdRoot)
	}, env)
	spawned = fresh
	if note != "" {
		notes = append(notes, note)
	}
	if err != nil {
		return append(notes, err.Error()), "", spawned
	}
	exits := r.exitCount(Containerd)
	switch msg, kind := r.waitDaemon(ctx, c, cfg.ContainerdSocket, cfg.ContainerdTimeout); {
	case kind == nil:
		// Ready now, not only once dockerd is: the Status at the start's
		// end sets both again.
		r.setReady(Containerd, true, exits)
		if c != nil {
			r.endPhase(report, PhaseContainerdReady, c.started)
		}
	case errors.Is(kind, errNotReady):
		notes = append(notes, fmt.Sprintf("containerd socket not ready after %s", cfg.ContainerdTimeout))
	default:
		return notes, msg, spawned
	}

	// dockerd.
	note, d, fresh, err := r.ensureDaemon(ctx, Dockerd, cfg.DockerSocket, func() (string, []string) {
		binary, socketArgs := r.identity(Dockerd) // "--host=unix://" and the socket
		args := append(socketArgs,
			"--containerd="+cfg.ContainerdSocket,
			"--exec-root="+cfg.DockerExecRoot,
			"--data-root="+cfg.DockerDataRoot,
			"--userland-proxy=false",
			"--pidfile="+r.pidFile(Dockerd),
		)
		return binary, append(args, cfg.ExtraDockerdArgs...)
	}, env)
	spawned = spawned || fresh
	if note != "" {
		notes = append(notes, note)
	}
	if err != nil {
		return append(notes, err.Error()), "", spawned
	}
	if msg, kind := r.waitDaemon(ctx, d, cfg.DockerSocket, cfg.DockerdTimeout); kind != nil {
		return notes, msg, spawned
	}
	if d != nil {
		r.endPhase(report, PhaseDockerdReady, d.started)
	}
	return notes, "", spawned
}

// ensureDaemon returns the running child that serves socket, spawning one
// (fresh) when the socket does not answer and no child of the service
// runs (one that runs but does not answer yet, started or adopted, is
// waited for, not doubled). c is nil when the socket already answers.
func (r *Runtime) ensureDaemon(ctx context.Context, name, socket string, command func() (string, []string), env []string) (note string, c *child, fresh bool, err error) {
	if r.cfg.Probe(ctx, name, socket) == nil {
		return "", nil, false, nil
	}
	if c := r.running(name); c != nil {
		how := "bundled"
		if c.adopted != nil {
			how = "adopted"
		}
		return fmt.Sprintf("waiting for %s %s (pid=%d)", how, name, c.pid), c, false, nil
	}
	path, args := command()
	c, err = r.spawn(name, path, args, env)
	if err != nil {
		return "", nil, false, fmt.Errorf("failed to spawn bundled %s: %w", name, err)
	}
	return fmt.Sprintf("spawned bundled %s (pid=%d)", name, c.pid), c, true, nil
}

// waitDaemon waits for c's socket (nil c: it already answered). When it
// does not come up, kind is errExited, errNotReady or the context's error,
// and msg names what did not come up and ends with its last log lines.
func (r *Runtime) waitDaemon(ctx context.Context, c *child, socket string, timeout time.Duration) (msg string, kind error) {
	if c == nil {
		return "", nil
	}
	err := r.waitSocket(ctx, c.name, socket, timeout, c.exited)
	switch {
	case err == nil:
		return "", nil
	case errors.Is(err, errExited):
		return fmt.Sprintf("%s exited before its socket %s came up: %s", c.name, socket, c.exitDetail()), err
	case errors.Is(err, errNotReady):
		return fmt.Sprintf("%s socket %s not ready after %s (pid %d still running); %s", c.name, socket, timeout, c.pid, c.liveTail()), err
	default:
		return fmt.Sprintf("runtime start abandoned while waiting for %s: %v", c.name, err), err
	}
}

// daemonEnv is the agent's environment with the runtime bin dir first on
// PATH and the standard directories last.
func daemonEnv(binDir string) []string {
	var env []string
	path := ""
	for _, kv := range os.Environ() {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
			continue
		}
		env = append(env, kv)
	}
	if path != "" {
		path = binDir + ":" + path + ":" + standardPath
	} else {
		path = binDir + ":" + standardPath
	}
	return append(env, "PATH="+path)
}
