package sandbox

// The config of the image a sandbox was made from: what its processes take
// by default, as a container's do under `docker run` and `docker exec`.

import (
	"path"
	"slices"
	"strings"
)

// ImageConfig is what a sandbox made from an image takes from the image's
// config. Env, WorkingDir and User are the defaults of every process in
// the sandbox, under the create request's own (Spec) and a process's
// (Process): a variable is laid over by name, the others are replaced.
// Entrypoint and Cmd are what a process that names no program runs
// (Command). The JSON tags are the form it is kept in by a backend.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"` // KEY=value, as the image has them
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"` // uid, uid:gid, name or name:group
}

// NewImageConfig makes the ImageConfig of an image's config fields. A
// working directory that is not absolute is taken from the root, as the
// image builders that write one mean it.
func NewImageConfig(entrypoint, cmd, env []string, workingDir, user string) ImageConfig {
	if workingDir != "" && !path.IsAbs(workingDir) {
		workingDir = path.Join("/", workingDir)
	}
	return ImageConfig{
		Entrypoint: slices.Clone(entrypoint),
		Cmd:        slices.Clone(cmd),
		Env:        slices.Clone(env),
		WorkingDir: workingDir,
		User:       user,
	}
}

// Command is what a process that names no program runs: the entrypoint
// followed by the cmd, as `docker run IMAGE` does. Empty when the image
// sets neither, or its program would be the empty string.
func (c ImageConfig) Command() []string {
	cmd := slices.Concat(c.Entrypoint, c.Cmd)
	if len(cmd) == 0 || cmd[0] == "" {
		return nil
	}
	return cmd
}

// EnvMap is the image's environment by name: an entry without '=' or with
// an empty name is skipped (it sets nothing), a later entry of a name wins.
func (c ImageConfig) EnvMap() map[string]string {
	out := make(map[string]string, len(c.Env))
	for _, kv := range c.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			out[k] = v
		}
	}
	return out
}

// ImageConfig returns the config of the image sandbox id was made from
// (for a sandbox restored from a snapshot, its original's image); nil
// when it was made from a root filesystem directory, when it is still
// starting and its image not yet read, or when the backend keeps no image
// configs. An unknown id is ErrNotFound. It does not block on the sandbox's
// operations.
func (m *Manager) ImageConfig(id string) (*ImageConfig, error) {
	m.mu.Lock()
	sb, err := m.lookupLocked(id)
	var image string
	if err == nil {
		image = sb.rec.Spec.Image
	}
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if image == "" {
		return nil, nil
	}
	cfg, err := m.backend.ImageConfig(id)
	if err != nil {
		return nil, Classify(ErrUnavailable, err)
	}
	return cfg, nil
}

// ResolveCmd gives a process that names no program (no Cmd) the command of
// the image its sandbox was made from: its entrypoint and cmd
// (ImageConfig.Command). A process that names one runs exactly it, the
// entrypoint not put before it, as `docker exec` does: a run is a command
// in the sandbox, and an image's entrypoint (`python`, say) before every
// run's would make each one an argument list of that program. The image's
// env, working directory and user apply either way (the backend lays
// them under the process's own).
//
// With no program and none from the image, the error wraps ErrInvalid and
// names the field cmd; an unknown sandbox is ErrNotFound, and one whose
// image is not read yet (starting) ErrConflict, as a run would be.
func (m *Manager) ResolveCmd(id string, p Process) (Process, error) {
	if len(p.Cmd) > 0 {
		return p, nil
	}
	cfg, err := m.ImageConfig(id)
	if err != nil {
		return p, err
	}
	if cfg != nil {
		if cmd := cfg.Command(); len(cmd) > 0 {
			p.Cmd = cmd
			return p, nil
		}
	}
	m.mu.Lock()
	sb, err := m.lookupLocked(id)
	var st State
	var image string
	if err == nil {
		st, image = sb.rec.State, sb.rec.Spec.Image
	}
	m.mu.Unlock()
	switch {
	case err != nil:
		return p, err
	case image == "":
		return p, InvalidField("cmd", "empty, and sandbox %q was not made from an image, whose entrypoint and cmd it would run: name the program to run", id)
	case cfg == nil && st != StateReady && st != StateRunning:
		return p, Errorf(ErrConflict, "sandbox %q is %s; a run needs it ready (its image's entrypoint and cmd are known then)", id, st)
	case cfg == nil:
		return p, InvalidField("cmd", "empty, and the config of the image of sandbox %q is not known here: name the program to run", id)
	}
	return p, InvalidField("cmd", "empty, and the image of sandbox %q sets no entrypoint or cmd: name the program to run", id)
}
