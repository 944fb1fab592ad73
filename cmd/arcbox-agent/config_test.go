package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/shares"
)

func cmdlineFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cmdline")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

type warnings []string

func (w *warnings) warn(msg string, kv ...any) {
	*w = append(*w, fmt.Sprint(append([]any{msg}, kv...)...))
}

func TestConfigDefaults(t *testing.T) {
	var w warnings
	c, err := loadConfig([]string{"--cmdline-file", cmdlineFile(t, "console=ttyS0 quiet")}, envOf(nil), nil, w.warn)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Listen, []string{"vsock://:1024"}) || c.DockerListen != "vsock://:2375" ||
		c.GuestDockerVsockPort != 2375 || c.DockerSocket != "/var/run/docker.sock" ||
		c.ContainerdSocket != "/run/containerd/containerd.sock" || c.RuntimeBinDir != "/arcbox/runtime/bin" ||
		c.DataDevice != "/dev/vdb" || c.WipeDataDevice || c.DataMount != "/run/arcbox/data" ||
		c.DockerDataRoot != "/var/lib/docker" || c.ContainerdRoot != "/var/lib/containerd" ||
		c.StateDir != "/var/lib/arcbox" || c.SandboxRootfs != "/var/lib/arcbox/rootfs/default" ||
		!c.SetClock || c.PrepareSystem || c.NTPServer != "" || c.SandboxCIDR.String() != "172.20.0.0/16" || len(c.AllowCIDs) != 0 {
		t.Errorf("defaults: %+v", c)
	}
	if c.EventJournalDir != "/var/lib/arcbox/events" || c.EventJournalSize != 10000 || c.SandboxMaxRuns != 64 ||
		c.SandboxRunOutputBytes != 8<<20 || c.SandboxHangupGrace != 2*time.Second || c.FileUploadLimit != 1<<30 {
		t.Errorf("the journal's and the workload API's defaults: %+v", c)
	}
	if got := shares.Format(c.Shares); got != "arcbox=/arcbox:dax=always,users=/Users,private=/private" || c.StateOnDataVolume {
		t.Errorf("shares %q, state on the data volume %v: want the seed's three shares, and no volume off PID 1", got, c.StateOnDataVolume)
	}
	if len(w) != 0 {
		t.Errorf("warnings: %v", w)
	}
}

// TestConfigShares: the kernel command line's list groups options with
// the share before them; "none" is no share.
func TestConfigShares(t *testing.T) {
	c, err := loadConfig([]string{"--cmdline-file", cmdlineFile(t, "arcbox.shares=arcbox=/arcbox:dax=always,ro,users=/Users")}, envOf(nil), nil, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	want := []shares.Spec{{Tag: "arcbox", Path: "/arcbox", Options: []string{"dax=always", "ro"}}, {Tag: "users", Path: "/Users"}}
	if !reflect.DeepEqual(c.Shares, want) || c.Sources["share"] != "kernel command line arcbox.shares" {
		t.Errorf("shares %+v from %q, want %+v from the kernel command line", c.Shares, c.Sources["share"], want)
	}
	c, err = loadConfig([]string{"--cmdline-file", "/nonexistent", "--share", "none"}, envOf(nil), nil, func(string, ...any) {})
	if err != nil || len(c.Shares) != 0 {
		t.Errorf("--share none: %+v, %v; want no share", c.Shares, err)
	}
}

// TestConfigPrecedence: flags > environment > kernel command line > defaults.
func TestConfigPrecedence(t *testing.T) {
	cl := cmdlineFile(t, "root=/dev/vda arcbox.docker_data_device=/dev/vdc arcbox.guest_docker_vsock_port=3000 arcbox.docker_data_device=/dev/vdz")
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantDevice string
		wantPort   uint32
		wantDocker string
		wantSource string
	}{
		{"cmdline over default (first value wins)", nil, nil, "/dev/vdc", 3000, "vsock://:3000", "kernel command line arcbox.docker_data_device"},
		{"env over cmdline", nil, map[string]string{"ARCBOX_DATA_DEVICE": "/dev/vdd", "ARCBOX_GUEST_DOCKER_VSOCK_PORT": "4000"},
			"/dev/vdd", 4000, "vsock://:4000", "env ARCBOX_DATA_DEVICE"},
		{"flag over env", []string{"--data-device=/dev/vde", "--guest-docker-vsock-port", "5000"},
			map[string]string{"ARCBOX_DATA_DEVICE": "/dev/vdd", "ARCBOX_GUEST_DOCKER_VSOCK_PORT": "4000"}, "/dev/vde", 5000, "vsock://:5000", "flag"},
		{"docker-listen overrides the port's default", []string{"--docker-listen", "unix:///run/docker-proxy.sock"}, nil,
			"/dev/vdc", 3000, "unix:///run/docker-proxy.sock", "kernel command line arcbox.docker_data_device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w warnings
			c, err := loadConfig(append([]string{"--cmdline-file", cl}, tt.args...), envOf(tt.env), nil, w.warn)
			if err != nil {
				t.Fatal(err)
			}
			if c.DataDevice != tt.wantDevice || c.GuestDockerVsockPort != tt.wantPort || c.DockerListen != tt.wantDocker {
				t.Errorf("got device %s port %d docker %s, want %s %d %s", c.DataDevice, c.GuestDockerVsockPort, c.DockerListen, tt.wantDevice, tt.wantPort, tt.wantDocker)
			}
			if got := c.Sources["data-device"]; got != tt.wantSource {
				t.Errorf("source of data-device = %q, want %q", got, tt.wantSource)
			}
		})
	}
}

// TestDockerPortIgnoresBadValues: a port that is not a positive integer is
// ignored, falling through to the next source, as API.md says.
func TestDockerPortIgnoresBadValues(t *testing.T) {
	tests := []struct {
		env, cmdline string
		want         uint32
	}{
		{"0", "arcbox.guest_docker_vsock_port=3000", 3000},
		{"-5", "", 2375},
		{"abc", "arcbox.guest_docker_vsock_port=x", 2375},
		{"", "arcbox.guest_docker_vsock_port=0", 2375},
		{"6000", "arcbox.guest_docker_vsock_port=3000", 6000},
	}
	for _, tt := range tests {
		var w warnings
		c, err := loadConfig([]string{"--cmdline-file", cmdlineFile(t, tt.cmdline)},
			envOf(map[string]string{"ARCBOX_GUEST_DOCKER_VSOCK_PORT": tt.env}), nil, w.warn)
		if err != nil {
			t.Fatalf("env %q cmdline %q: %v", tt.env, tt.cmdline, err)
		}
		if c.GuestDockerVsockPort != tt.want {
			t.Errorf("env %q cmdline %q: port %d, want %d", tt.env, tt.cmdline, c.GuestDockerVsockPort, tt.want)
		}
		if tt.want != 6000 && (tt.env != "" || strings.Contains(tt.cmdline, "=x") || strings.Contains(tt.cmdline, "=0")) && len(w) == 0 {
			t.Errorf("env %q cmdline %q: ignored silently", tt.env, tt.cmdline)
		}
	}
	// A bad flag is the operator's own typo: an error, not a fallback.
	if _, err := loadConfig([]string{"--guest-docker-vsock-port", "0"}, envOf(nil), nil, func(string, ...any) {}); err == nil {
		t.Error("a bad --guest-docker-vsock-port flag was accepted")
	}
	for _, cidr := range []string{"172.20.0.0", "172.20.0.5/16", "fd00::/64", "10.0.0.0/31"} {
		_, err := loadConfig([]string{"--cmdline-file", cmdlineFile(t, ""), "--sandbox-cidr", cidr}, envOf(nil), nil, func(string, ...any) {})
		if err == nil || !strings.Contains(err.Error(), "--sandbox-cidr") {
			t.Errorf("--sandbox-cidr %s: %v, want an error naming the flag", cidr, err)
		}
	}
	c, err := loadConfig([]string{"--cmdline-file", cmdlineFile(t, "")}, envOf(map[string]string{"ARCBOX_SANDBOX_CIDR": "10.88.0.0/24"}), nil, func(string, ...any) {})
	if err != nil || c.SandboxCIDR.String() != "10.88.0.0/24" {
		t.Errorf("ARCBOX_SANDBOX_CIDR: %v, %v", c, err)
	}
}

func TestConfigListsAndBools(t *testing.T) {
	c, err := loadConfig([]string{"--listen", "tcp://:8080", "--listen", "unix:///run/a.sock", "--allow-cid", "3",
		"--set-clock=false", "--wipe-data-device", "--cmdline-file", "/nonexistent",
		"--dockerd-arg", "--iptables=false", "--dockerd-arg", "--bridge=none"},
		envOf(map[string]string{"ARCBOX_ALLOW_CID": "9", "ARCBOX_PREPARE_SYSTEM": "true"}), nil, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Listen, []string{"tcp://:8080", "unix:///run/a.sock"}) {
		t.Errorf("listen = %v", c.Listen)
	}
	if !reflect.DeepEqual(c.DockerdArgs, []string{"--iptables=false", "--bridge=none"}) {
		t.Errorf("dockerd-arg = %v", c.DockerdArgs)
	}
	if !reflect.DeepEqual(c.AllowCIDs, []uint32{3}) {
		t.Errorf("allow-cid = %v, want the flag's [3] over the environment's", c.AllowCIDs)
	}
	if c.SetClock || !c.WipeDataDevice || !c.PrepareSystem {
		t.Errorf("bools: set-clock %v wipe %v prepare %v", c.SetClock, c.WipeDataDevice, c.PrepareSystem)
	}
	c, err = loadConfig([]string{"--cmdline-file", "/nonexistent"}, envOf(map[string]string{"ARCBOX_LISTEN": "tcp://:1, unix:///run/b.sock"}), nil, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Listen, []string{"tcp://:1", "unix:///run/b.sock"}) {
		t.Errorf("listen from env = %v", c.Listen)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--listen", "http://:80"}, nil, "--listen from flag"},
		{nil, map[string]string{"ARCBOX_SET_CLOCK": "maybe"}, "--set-clock from env ARCBOX_SET_CLOCK: \"maybe\" is not a boolean"},
		{nil, map[string]string{"ARCBOX_ALLOW_CID": "host"}, "--allow-cid from env ARCBOX_ALLOW_CID"},
		{[]string{"--shutdown-timeout", "soon"}, nil, "--shutdown-timeout from flag"},
		{[]string{"--max-procs", "-1"}, nil, `--max-procs from flag: "-1" is not a whole number from 0 to 1024`},
		{[]string{"--sandbox-max-runs", "0"}, nil, `--sandbox-max-runs from flag: "0" is not a whole number from 1 to 4096`},
		{[]string{"--file-upload-limit", "1G"}, nil, `--file-upload-limit from flag: "1G" is not a whole number`},
		{nil, map[string]string{"ARCBOX_EVENT_JOURNAL_SIZE": "-5"}, "--event-journal-size from env ARCBOX_EVENT_JOURNAL_SIZE"},
		{[]string{"--sandbox-hangup-grace", "-1s"}, nil, `--sandbox-hangup-grace from flag: "-1s" is not a duration`},
		{[]string{"--share", "arcbox=/arcbox:dax=always,turbo"}, nil, `--share from flag: `},
		{[]string{"--share", "users=Users"}, nil, `--share from flag: `},
		{[]string{"--share", "a=/a", "--share", "a=/b"}, nil, `--share from flag: `},
		{nil, map[string]string{"ARCBOX_SHARE": "ro,users=/Users"}, "--share from env ARCBOX_SHARE"},
		{[]string{"--no-such-flag"}, nil, "flag provided but not defined: -no-such-flag"},
		{[]string{"stray"}, nil, `unexpected argument "stray"`},
	}
	for _, tt := range tests {
		_, err := loadConfig(append([]string{"--cmdline-file", "/nonexistent"}, tt.args...), envOf(tt.env), nil, func(string, ...any) {})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("args %v env %v: err = %v, want it to contain %q", tt.args, tt.env, err, tt.want)
		}
	}
}

func TestHelpNamesEachEnvironmentVariable(t *testing.T) {
	var out bytes.Buffer
	_, err := loadConfig([]string{"--help"}, envOf(nil), &out, func(string, ...any) {})
	if !errors.Is(err, errHelp) {
		t.Fatalf("err = %v, want errHelp", err)
	}
	for _, s := range new(config).settings() {
		if !strings.Contains(out.String(), "--"+s.name) || !strings.Contains(out.String(), envName(s.name)) {
			t.Errorf("--help lacks --%s or %s", s.name, envName(s.name))
		}
	}
	for _, want := range []string{"arcbox.docker_data_device=", "arcbox.guest_docker_vsock_port=", "default vsock://:1024"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if _, err := loadConfig([]string{"--version"}, envOf(nil), nil, nil); !errors.Is(err, errVersion) {
		t.Errorf("--version: err = %v", err)
	}
}

// TestCmdlineQuotesAndInitArgs: the kernel's own rules for its command
// line: double quotes hold white space in a value and are taken off, and
// what follows "--" is init's.
func TestCmdlineQuotesAndInitArgs(t *testing.T) {
	for _, tt := range []struct{ cmdline, key, want string }{
		{`arcbox.docker_data_device="/dev/my disk" quiet`, "arcbox.docker_data_device", "/dev/my disk"},
		{`arcbox.modules="virtio_pci"`, "arcbox.modules", "virtio_pci"},
		{`"arcbox.modules=a b"`, "arcbox.modules", "a b"},
		{`arcbox.modules=x -- arcbox.modules=y`, "arcbox.modules", "x"},
		{`-- arcbox.modules=y`, "arcbox.modules", ""},
	} {
		got := readCmdline(cmdlineFile(t, tt.cmdline))[tt.key]
		if got != tt.want {
			t.Errorf("%s: %s = %q, want %q", tt.cmdline, tt.key, got, tt.want)
		}
	}
}

func TestConfigSecurityFlags(t *testing.T) {
	c, err := loadConfig([]string{"--cmdline-file", "/nonexistent",
		"--sandbox-mount-root", "/srv/a,/srv/b/", "--sandbox-mount-root", "/mnt/shared",
		"--registry", "registry.example.com", "--registry", "127.0.0.1:5000,[::1]:5001",
		"--socket-group", "root", "--insecure-loopback"},
		envOf(map[string]string{"ARCBOX_REGISTRY_AUTH_FILE": "/etc/arcbox/auths.json", "ARCBOX_AUDIT_LOG": "/var/log/audit.log"}), nil, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.SandboxMountRoots, []string{"/srv/a", "/srv/b", "/mnt/shared"}) ||
		!reflect.DeepEqual(c.Registries, []string{"registry.example.com", "127.0.0.1:5000", "[::1]:5001"}) ||
		c.RegistryAuthFile != "/etc/arcbox/auths.json" || c.AuditLog != "/var/log/audit.log" ||
		!c.HasSocketGID || c.SocketGID != 0 || !c.InsecureLoopback {
		t.Errorf("config: %+v", c)
	}
	// Unset, the lists are nil: the sandbox package's defaults.
	c, err = loadConfig([]string{"--cmdline-file", "/nonexistent", "--socket-group", "1234"}, envOf(nil), nil, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	if c.SandboxMountRoots != nil || c.Registries != nil || c.AuthTokenFile != "" || c.InsecureLoopback || c.SocketGID != 1234 || !c.HasSocketGID {
		t.Errorf("defaults: %+v", c)
	}
	for _, tt := range []struct{ args []string }{
		{[]string{"--sandbox-mount-root", "relative/dir"}},
		{[]string{"--registry", "https://registry.example.com"}},
		{[]string{"--registry", "registry.example.com/library"}},
		{[]string{"--registry", "registry.example.com:99999"}},
		{[]string{"--registry", "::1"}},
		{[]string{"--socket-group", "no-such-group-here"}},
		{[]string{"--audit-log", "audit.log"}},
		{[]string{"--insecure-loopback=maybe"}},
	} {
		_, err := loadConfig(append([]string{"--cmdline-file", "/nonexistent"}, tt.args...), envOf(nil), nil, func(string, ...any) {})
		flagName, _, _ := strings.Cut(tt.args[0], "=")
		if err == nil || !strings.Contains(err.Error(), flagName) {
			t.Errorf("%v: err = %v, want one naming %s", tt.args, err, tt.args[0])
		}
	}
}
