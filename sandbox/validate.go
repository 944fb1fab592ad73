package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// IDPattern is what a sandbox id (and a snapshot's) looks like: 1 to 64
// letters, digits, '_', '.' or '-', the first a letter or digit.
const IDPattern = `^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`

// idPattern and userPattern are compiled on first use, not at every
// start of the agent.
var idPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(IDPattern) })

// userPattern is uid[:gid] or name[:group].
var userPattern = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9_.-]*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]*)?$`)
})

// MinMemoryMiB is the least memory a sandbox may have: its init alone
// needs a few MiB.
const MinMemoryMiB = 8

// MinPids is the lowest pids limit a sandbox may have: its init and a
// runtime's exec take a few.
const MinPids = 8

// InvalidField is the error for a bad field, named as the API names it:
// the Manager's, and a Backend's (Backend.Validate).
func InvalidField(field, format string, args ...any) error {
	return Errorf(ErrInvalid, "field %q: %s", field, fmt.Sprintf(format, args...))
}

// ValidateID checks a sandbox id against ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$.
func ValidateID(id string) error {
	if !idPattern().MatchString(id) {
		return InvalidField("id", "%q does not match %s", id, IDPattern)
	}
	return nil
}

// newID makes an id for a sandbox created without one.
func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

// normalize checks what can be checked of a spec without the machine and
// returns it in canonical form (defaults applied, empty collections nil), so
// two requests for the same sandbox compare equal.
func normalize(s Spec, defaults Limits) (Spec, error) {
	if s.ID != "" {
		if err := ValidateID(s.ID); err != nil {
			return s, err
		}
	}
	for k := range s.Labels {
		if k == "" {
			return s, InvalidField("labels", "empty key")
		}
	}
	if s.Limits.VCPUs < 0 {
		return s, InvalidField("limits.vcpus", "%d is negative", s.Limits.VCPUs)
	}
	if s.Limits.MemoryMiB < 0 || (s.Limits.MemoryMiB > 0 && s.Limits.MemoryMiB < MinMemoryMiB) {
		return s, InvalidField("limits.memory_mib", "%d is below the minimum of %d", s.Limits.MemoryMiB, MinMemoryMiB)
	}
	if s.Limits.Pids < 0 || (s.Limits.Pids > 0 && s.Limits.Pids < MinPids) {
		return s, InvalidField("limits.pids", "%d is below the minimum of %d", s.Limits.Pids, MinPids)
	}
	if s.Limits.Pids == 0 {
		s.Limits.Pids = defaults.Pids
	}
	if s.RegistryAuth != nil && s.Image == "" {
		return s, InvalidField("registry_auth", "credentials are for pulling an image, and there is no image")
	}
	if s.Limits.VCPUs == 0 {
		s.Limits.VCPUs = defaults.VCPUs
	}
	if s.Limits.MemoryMiB == 0 {
		s.Limits.MemoryMiB = defaults.MemoryMiB
	}
	if len(s.Cmd) > 0 && s.Cmd[0] == "" {
		return s, InvalidField("cmd", "the program (cmd[0]) is empty")
	}
	if err := checkEnv("env", s.Env); err != nil {
		return s, err
	}
	if err := checkWorkingDir("working_dir", s.WorkingDir); err != nil {
		return s, err
	}
	if err := checkUser("user", s.User); err != nil {
		return s, err
	}
	for i, mnt := range s.Mounts {
		if err := checkMount(i, mnt); err != nil {
			return s, err
		}
	}
	switch s.NetworkMode {
	case "", NetworkNone:
		s.NetworkMode = NetworkNone
	case NetworkBridge, networkTap:
		s.NetworkMode = NetworkBridge
	default:
		return s, InvalidField("network.mode", "unknown mode %q; the modes are %q and %q (%q is an alias of %q)",
			s.NetworkMode, NetworkNone, NetworkBridge, networkTap, NetworkBridge)
	}
	if s.TTL < 0 {
		return s, InvalidField("ttl_seconds", "%v is negative", s.TTL)
	}
	if len(s.Labels) == 0 {
		s.Labels = nil
	} else {
		s.Labels = maps.Clone(s.Labels)
	}
	if len(s.Env) == 0 {
		s.Env = nil
	} else {
		s.Env = maps.Clone(s.Env)
	}
	if len(s.Cmd) == 0 {
		s.Cmd = nil
	} else {
		s.Cmd = slices.Clone(s.Cmd)
	}
	if len(s.Mounts) == 0 {
		s.Mounts = nil
	} else {
		s.Mounts = slices.Clone(s.Mounts)
	}
	return s, nil
}

// checkProcess checks a process to run.
func checkProcess(p Process) error {
	if len(p.Cmd) == 0 || p.Cmd[0] == "" {
		return InvalidField("cmd", "empty: name the program to run")
	}
	if err := checkEnv("env", p.Env); err != nil {
		return err
	}
	if err := checkWorkingDir("working_dir", p.WorkingDir); err != nil {
		return err
	}
	if err := checkUser("user", p.User); err != nil {
		return err
	}
	if p.Timeout < 0 {
		return InvalidField("timeout_seconds", "%v is negative", p.Timeout)
	}
	return nil
}

func checkEnv(field string, env map[string]string) error {
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return InvalidField(field, "bad variable name %q", k)
		}
		if strings.Contains(v, "\x00") {
			return InvalidField(field, "value of %s holds a NUL byte", k)
		}
	}
	return nil
}

func checkWorkingDir(field, dir string) error {
	if dir == "" {
		return nil
	}
	if !path.IsAbs(dir) || strings.Contains(dir, "\x00") {
		return InvalidField(field, "%q is not an absolute path", dir)
	}
	return nil
}

func checkUser(field, user string) error {
	if user != "" && !userPattern().MatchString(user) {
		return InvalidField(field, "%q is neither uid[:gid] nor name[:group]", user)
	}
	return nil
}

func checkMount(i int, m Mount) error {
	target := fmt.Sprintf("mounts[%d].target", i)
	source := fmt.Sprintf("mounts[%d].source", i)
	if !path.IsAbs(m.Target) {
		return InvalidField(target, "%q is not an absolute path", m.Target)
	}
	if slices.Contains(strings.Split(m.Target, "/"), "..") {
		return InvalidField(target, "%q has a \"..\" element", m.Target)
	}
	if path.Clean(m.Target) == "/" {
		return InvalidField(target, "cannot mount over the root")
	}
	if strings.ContainsAny(m.Target, "\x00") {
		return InvalidField(target, "holds a NUL byte")
	}
	if !path.IsAbs(m.Source) || strings.ContainsAny(m.Source, "\x00") {
		return InvalidField(source, "%q is not an absolute path", m.Source)
	}
	return nil
}
