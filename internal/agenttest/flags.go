//go:build linux

package agenttest

import "path/filepath"

// Flags are the flags of an agent under test whose every path is under
// dir: its control API on Socket(dir), its Docker API proxy on
// DockerSocket(dir), the runtime's sockets, roots, state and logs, a data
// device (dir/data.img, which only a test that wants the data volume
// makes), and nothing read from this machine's kernel command line. The
// extra flags follow; a flag given again overrides these, but --listen,
// which adds a listener.
func Flags(dir string, extra ...string) []string {
	return append([]string{
		"--listen", "unix://" + Socket(dir),
		"--docker-listen", "unix://" + DockerSocket(dir),
		"--cmdline-file", "/nonexistent",
		"--log-dir", filepath.Join(dir, "log"),
		"--runtime-bin-dir", filepath.Join(dir, "bin"),
		"--data-device", filepath.Join(dir, "data.img"),
		"--data-mount", filepath.Join(dir, "data"),
		"--docker-socket", filepath.Join(dir, "docker.sock"),
		"--containerd-socket", filepath.Join(dir, "containerd.sock"),
		"--docker-data-root", filepath.Join(dir, "docker"),
		"--containerd-root", filepath.Join(dir, "containerd"),
		"--containerd-state", filepath.Join(dir, "containerd-state"),
		"--containerd-config", filepath.Join(dir, "containerd.toml"),
		"--docker-exec-root", filepath.Join(dir, "docker-exec"),
		"--state-dir", filepath.Join(dir, "state"),
		"--disk-state-dir", filepath.Join(dir, "disk"),
		"--sandbox-id-range-dir", filepath.Join(dir, "idranges"),
	}, extra...)
}

// Socket is the control API's unix socket of an agent with Flags(dir).
func Socket(dir string) string { return filepath.Join(dir, "agent.sock") }

// DockerSocket is the Docker API proxy's unix socket of an agent with
// Flags(dir).
func DockerSocket(dir string) string { return Socket(dir) + ".docker" }
