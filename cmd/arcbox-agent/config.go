package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/events"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/lifecycle"
	"github.com/arcbox/arcbox-agent/netconf"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/oci"
	"github.com/arcbox/arcbox-agent/shares"
)

// config is every setting of the agent, resolved from flags, then the
// environment (ARCBOX_<FLAG>), then the kernel command line, then defaults.
type config struct {
	Listen                 []string
	DockerListen           string
	GuestDockerVsockPort   uint32
	DockerSocket           string
	ContainerdSocket       string
	RuntimeBinDir          string
	Shares                 []shares.Spec
	DataDevice             string
	WipeDataDevice         bool
	DataMount              string
	DockerDataRoot         string
	ContainerdRoot         string
	ContainerdState        string
	ContainerdConfig       string
	DockerExecRoot         string
	DataSubvolumes         []disk.Subvolume
	StateDir               string
	StateOnDataVolume      bool
	DiskStateDir           string
	DockerdArgs            []string
	ContainerdStartTimeout time.Duration
	DockerdStartTimeout    time.Duration
	LogDir                 string
	CmdlineFile            string
	AllowCIDs              []uint32
	AuthTokenFile          string
	InsecureLoopback       bool
	SocketGroup            string // as given, for messages
	SocketGID              int
	HasSocketGID           bool
	AuditLog               string
	SandboxMountRoots      []string
	SandboxIDRangeDir      string
	EventJournalDir        string
	EventJournalSize       int
	SandboxMaxRuns         int
	SandboxRunOutputBytes  int64
	SandboxHangupGrace     time.Duration
	FileUploadLimit        int64
	Registries             []string
	RegistryAuthFile       string
	PrepareSystem          bool
	SetClock               bool
	NTPServer              string
	OCIRuntime             string
	SandboxRootfs          string
	BusyboxPath            string
	SandboxCIDR            netip.Prefix
	LogLevel               string
	LogFormat              string
	ShutdownTimeout        time.Duration
	MaxProcs               int
	Modules                []string
	NetAddresses           []netconf.Address

	// Where each value came from, for the startup log.
	Sources map[string]string
}

// setting is one row of the configuration table: a flag, where else its
// value may come from, its default, and how a value is set into the
// config the table was made for.
type setting struct {
	name       string // the flag, without dashes
	cmdline    string // the kernel command-line key, if any ("arcbox.x=")
	usage      string
	repeatable bool // a flag given many times; a comma-separated list in the environment
	isBool     bool
	// def is the default, or defFrom computes it: from the settings
	// above the row (resolved first) or from the machine.
	def     string
	defFrom func() string
	set     func(v string) error
	// lenient settings ignore a bad value from the environment or the
	// kernel command line (with a warning) and fall through to the next
	// source, instead of failing.
	lenient bool
}

// defaultValue is the setting's default, computed when it has to be.
func (s setting) defaultValue() string {
	if s.defFrom != nil {
		return s.defFrom()
	}
	return s.def
}

// envName is the environment variable of a setting: --docker-socket is
// ARCBOX_DOCKER_SOCKET.
func envName(flagName string) string {
	return "ARCBOX_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// text sets a string setting that passes the checks, if any.
func text(dst *string, checks ...func(string) error) func(v string) error {
	return func(v string) error {
		for _, check := range checks {
			if err := check(v); err != nil {
				return err
			}
		}
		*dst = v
		return nil
	}
}

// boolean sets a true-or-false setting.
// number sets a whole number from lo to hi.
func number[T int | int64](dst *T, lo, hi T) func(v string) error {
	return func(v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || T(n) < lo || T(n) > hi {
			return fmt.Errorf("%q is not a whole number from %d to %d", v, lo, hi)
		}
		*dst = T(n)
		return nil
	}
}

// duration sets a duration that is not negative, such as 10s.
func duration(dst *time.Duration) func(v string) error {
	return func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("%q is not a duration such as 10s", v)
		}
		*dst = d
		return nil
	}
}

func boolean(dst *bool) func(v string) error {
	return func(v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not a boolean (true or false)", v)
		}
		*dst = b
		return nil
	}
}

// each sets a repeatable setting: parse checks each item of the list and
// says what it adds to the field (see asIs and valid).
func each[T any](dst *[]T, parse func(item string) (T, error)) func(v string) error {
	return func(v string) error {
		for _, item := range splitList(v) {
			x, err := parse(item)
			if err != nil {
				return err
			}
			*dst = append(*dst, x)
		}
		return nil
	}
}

// oneOf checks a setting that takes one of a few words.
func oneOf(choices ...string) func(v string) error {
	return func(v string) error {
		if !slices.Contains(choices, v) {
			return fmt.Errorf("%q is not one of %s", v, strings.Join(choices, ", "))
		}
		return nil
	}
}

// settings is the table over c, in resolution order: a default may use
// the settings above it.
func (c *config) settings() []setting {
	return []setting{
		{name: "cmdline-file", usage: "the kernel command line to read settings from",
			def: "/proc/cmdline", set: text(&c.CmdlineFile)},
		{name: "listen", repeatable: true, usage: "control API listener URL: vsock://[CID]:PORT, unix:///path or tcp://HOST:PORT (repeatable)",
			def: "vsock://:1024", set: each(&c.Listen, valid(checkEndpoint))},
		{name: "guest-docker-vsock-port", cmdline: "arcbox.guest_docker_vsock_port", lenient: true,
			usage: "the vsock port of the Docker API proxy's default listener", def: "2375",
			set: func(v string) error {
				p, err := strconv.ParseUint(v, 10, 32)
				if err != nil || p == 0 {
					return fmt.Errorf("%q is not a positive integer", v)
				}
				c.GuestDockerVsockPort = uint32(p)
				return nil
			}},
		{name: "docker-listen", usage: "Docker API proxy listener URL",
			defFrom: func() string { return fmt.Sprintf("vsock://:%d", c.GuestDockerVsockPort) },
			set:     text(&c.DockerListen, checkEndpoint)},
		{name: "docker-socket", usage: "dockerd's unix socket",
			def: "/var/run/docker.sock", set: text(&c.DockerSocket)},
		{name: "containerd-socket", usage: "containerd's unix socket",
			def: "/run/containerd/containerd.sock", set: text(&c.ContainerdSocket)},
		{name: "runtime-bin-dir", usage: "where dockerd, containerd, containerd-shim-runc-v2 and runc are",
			def: "/arcbox/runtime/bin", set: text(&c.RuntimeBinDir)},
		{name: "share", repeatable: true, cmdline: "arcbox.shares",
			usage: "a VirtioFS share mounted at startup when the VM has its tag, TAG=PATH[:OPTIONS], OPTIONS being mount options separated by commas (repeatable; \"none\": no share)",
			def:   shares.Format(shares.Defaults()),
			set: func(v string) error {
				// Not each: an item that is no TAG=/path is one more
				// option of the share before it.
				specs, err := shares.Parse(v)
				if err != nil {
					return err
				}
				c.Shares = append(c.Shares, specs...)
				return shares.Validate(c.Shares)
			}},
		{name: "data-device", cmdline: "arcbox.docker_data_device", usage: "the data volume: a block device, or an image file attached to a loop device",
			def: "/dev/vdb", set: text(&c.DataDevice)},
		{name: "wipe-data-device", isBool: true, usage: "format the data device even though it carries another filesystem (destroys its data)",
			def: "false", set: boolean(&c.WipeDataDevice)},
		{name: "data-mount", usage: "where the raw data volume is mounted",
			def: "/run/arcbox/data", set: text(&c.DataMount)},
		{name: "docker-data-root", usage: "dockerd's data root (the @docker subvolume)",
			def: "/var/lib/docker", set: text(&c.DockerDataRoot)},
		{name: "containerd-root", usage: "containerd's root (the @containerd subvolume)",
			def: "/var/lib/containerd", set: text(&c.ContainerdRoot)},
		{name: "containerd-state", usage: "containerd's state directory (--state)",
			def: "/run/containerd", set: text(&c.ContainerdState)},
		{name: "containerd-config", usage: "where the agent writes containerd's configuration",
			def: "/etc/containerd/config.toml", set: text(&c.ContainerdConfig)},
		{name: "docker-exec-root", usage: "dockerd's --exec-root (its pid file goes there too)",
			def: "/var/run/docker", set: text(&c.DockerExecRoot)},
		{name: "data-subvolume", repeatable: true, usage: "an extra subvolume of the data volume and where it is mounted, NAME=PATH (repeatable)",
			set: each(&c.DataSubvolumes, func(s string) (disk.Subvolume, error) {
				name, target, ok := strings.Cut(s, "=")
				if !ok || name == "" || !filepath.IsAbs(target) {
					return disk.Subvolume{}, fmt.Errorf("%q: want NAME=/absolute/path, such as @sandboxes=/var/lib/arcbox", s)
				}
				return disk.Subvolume{Name: name, Target: target}, nil
			})},
		{name: "disk-state-dir", usage: "where the data volume keeps its format journal (on tmpfs by default, so a reboot forgets it)",
			def: "/run/arcbox/disk", set: text(&c.DiskStateDir)},
		{name: "state-dir", usage: "sandboxes, snapshots, image cache and agent records",
			def: "/var/lib/arcbox", set: text(&c.StateDir)},
		{name: "state-on-data-volume", isBool: true, usage: "keep the state dir on the data volume's @arcbox subvolume, prepared at startup (a blank volume is formatted then), so checkpoints are btrfs snapshots (default true when the agent is PID 1)",
			defFrom: func() string { return strconv.FormatBool(os.Getpid() == 1) }, set: boolean(&c.StateOnDataVolume)},
		{name: "event-journal-dir", usage: "where the event journal keeps the last events, so a subscriber resumes from the seq it last read across agent restarts (default <state-dir>/events)",
			defFrom: func() string { return filepath.Join(c.StateDir, "events") }, set: text(&c.EventJournalDir)},
		{name: "event-journal-size", usage: "how many of the last events the journal keeps for subscribers to replay (1 to 1000000)",
			def: strconv.Itoa(events.DefaultSize), set: number(&c.EventJournalSize, 1, maxEventJournalSize)},
		{name: "log-dir", usage: "where runtime daemons log (default /arcbox/log when /arcbox exists once the shares are mounted, else /var/log/arcbox)",
			set: text(&c.LogDir)},
		{name: "containerd-start-timeout", usage: "how long a start waits for containerd's socket before going on to dockerd, which waits for it too",
			def: lifecycle.DefaultContainerdTimeout.String(), set: duration(&c.ContainerdStartTimeout)},
		{name: "dockerd-start-timeout", usage: "how long a start waits for dockerd to answer before ensure answers failed (a slow, emulated machine may need more)",
			def: lifecycle.DefaultDockerdTimeout.String(), set: duration(&c.DockerdStartTimeout)},
		{name: "dockerd-arg", repeatable: true, usage: "an extra flag for dockerd, such as --iptables=false for an image without iptables (repeatable)",
			set: each(&c.DockerdArgs, asIs)},
		{name: "allow-cid", repeatable: true, usage: "a vsock peer CID accepted besides the host's 2 (repeatable)",
			set: each(&c.AllowCIDs, func(s string) (uint32, error) {
				cid, err := strconv.ParseUint(s, 10, 32)
				if err != nil {
					return 0, fmt.Errorf("%q is not a CID (a 32-bit number)", s)
				}
				return uint32(cid), nil
			})},
		{name: "auth-token-file", usage: "a file (mode 0600) holding the bearer token, 32 characters or more, that requests on TCP listeners must carry as Authorization: Bearer <token> (on the Docker proxy, the first request of each connection)",
			set: text(&c.AuthTokenFile)},
		{name: "insecure-loopback", isBool: true, usage: "serve TCP listeners on loopback addresses without a token when there is no --auth-token-file (any local user can then reach the API)",
			def: "false", set: boolean(&c.InsecureLoopback)},
		{name: "socket-group", usage: "a group (name or GID) that may connect to the agent's unix sockets too: they are then 0660 instead of 0600 (empty: root alone)",
			set: func(v string) error {
				c.SocketGroup, c.HasSocketGID = v, false
				if v == "" {
					return nil
				}
				gid, err := lookupGroup(v)
				if err != nil {
					return err
				}
				c.SocketGID, c.HasSocketGID = gid, true
				return nil
			}},
		{name: "audit-log", usage: "a file the audit log of mutating calls is appended to as JSON lines, mode 0600 (empty: the main log)",
			set: text(&c.AuditLog, func(v string) error {
				if v != "" && !filepath.IsAbs(v) {
					return fmt.Errorf("%q is not an absolute path", v)
				}
				return nil
			})},
		{name: "prepare-system", isBool: true, usage: "mount cgroup2, devpts and tmpfs, set ip_forward and load overlay before the runtime starts (default true when the agent is PID 1)",
			defFrom: func() string { return strconv.FormatBool(os.Getpid() == 1) }, set: boolean(&c.PrepareSystem)},
		{name: "set-clock", isBool: true, usage: "let a ping with the host's time step the guest's realtime clock",
			def: "true", set: boolean(&c.SetClock)},
		{name: "ntp-server", usage: "an NTP server for a one-shot sync before the runtime starts (empty: none)",
			set: text(&c.NTPServer)},
		{name: "oci-runtime", usage: "the sandboxes' OCI runtime: runc, crun, or a path (empty: the faster one present)",
			set: text(&c.OCIRuntime)},
		{name: "sandbox-rootfs", usage: "the default root filesystem directory of sandboxes",
			defFrom: func() string { return oci.DefaultRootfsDir(c.StateDir) }, set: text(&c.SandboxRootfs)},
		{name: "sandbox-busybox", usage: "the static busybox the default root filesystem is made from when it does not exist",
			def: oci.DefaultBusyboxPath, set: text(&c.BusyboxPath)},
		{name: "sandbox-cidr", usage: "the address range of bridged sandboxes (IPv4, /8 to /30); its first address is the gateway, the bridge's own",
			def: sandbox.DefaultBridgeCIDR.String(),
			set: func(v string) error {
				p, err := netip.ParsePrefix(v)
				switch {
				case err != nil:
					return fmt.Errorf("%q is not an address range such as 172.20.0.0/16", v)
				case !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30:
					return fmt.Errorf("%q: want an IPv4 range from /8 to /30", v)
				case p.Masked() != p:
					return fmt.Errorf("%q has host bits set; the range is %s", v, p.Masked())
				}
				c.SandboxCIDR = p
				return nil
			}},
		{name: "sandbox-mount-root", repeatable: true, usage: "a directory whose contents sandboxes may bind-mount (repeatable; none given: the VirtioFS shares, wherever mounted)",
			set: each(&c.SandboxMountRoots, func(d string) (string, error) {
				if !filepath.IsAbs(d) {
					return "", fmt.Errorf("%q is not an absolute path", d)
				}
				return filepath.Clean(d), nil
			})},
		{name: "sandbox-id-range-dir", usage: "where the machine's agents claim their sandboxes' user namespace id ranges, so two never share one",
			def: sandbox.DefaultIDRangeDir, set: text(&c.SandboxIDRangeDir)},
		{name: "sandbox-max-runs", usage: "how many runs a sandbox may have in progress at once (1 to 4096); past it a run is refused (409)",
			def: strconv.Itoa(sandbox.DefaultMaxRuns), set: number(&c.SandboxMaxRuns, 1, 4096)},
		{name: "sandbox-run-output-bytes", usage: "how many bytes of each run's output are kept for reading from an offset (64 KiB to 1 GiB); the oldest go first",
			def: strconv.Itoa(sandbox.DefaultRunOutputBytes), set: number(&c.SandboxRunOutputBytes, 64<<10, 1<<30)},
		{name: "sandbox-hangup-grace", usage: "how long a run whose client hung up has after SIGHUP before SIGKILL",
			def: sandbox.DefaultHangupGrace.String(), set: duration(&c.SandboxHangupGrace)},
		{name: "file-upload-limit", usage: "the largest upload the files API takes, a file or an archive, in bytes (1 to 1 TiB); past it 413",
			def: strconv.Itoa(handlers.DefaultFileUploadLimit), set: number(&c.FileUploadLimit, 1, 1<<40)},
		{name: "registry", repeatable: true, usage: "a registry, HOST[:PORT], sandbox images may be pulled from (repeatable; none given: any but loopback and link-local ones)",
			set: each(&c.Registries, valid(checkRegistry))},
		{name: "registry-auth-file", usage: "a Docker config.json whose \"auths\" credentials image pulls use when a create brings none (empty: none)",
			set: text(&c.RegistryAuthFile)},
		{name: "log-level", usage: "debug, info, warn or error",
			def: "info", set: text(&c.LogLevel, oneOf("debug", "info", "warn", "error"))},
		{name: "log-format", usage: "json, text, or auto (text on a terminal, else JSON)",
			def: "auto", set: text(&c.LogFormat, oneOf("json", "text", "auto"))},
		{name: "modules", repeatable: true, cmdline: "arcbox.modules",
			usage: "kernel modules to load with their dependencies before listening (repeatable), e.g. virtio_pci,vsock_loopback",
			set:   each(&c.Modules, asIs)},
		{name: "net-address", repeatable: true, cmdline: "arcbox.net_address",
			usage: "an interface's static IPv4 address, IFACE=ADDRESS/BITS, set before listening (repeatable)",
			set:   each(&c.NetAddresses, netconf.ParseAddress)},
		{name: "shutdown-timeout", usage: "how long requests in flight may finish after SIGTERM",
			def: "10s", set: duration(&c.ShutdownTimeout)},
		{name: "max-procs", usage: "how many CPUs run the agent's own code at once (GOMAXPROCS; 0: all of them); GOMAXPROCS in the environment wins",
			def: "1", set: number(&c.MaxProcs, 0, 1024)},
	}
}

// asIs takes a list item as given.
func asIs(s string) (string, error) { return s, nil }

// valid takes a list item as given once check accepts it.
func valid(check func(string) error) func(string) (string, error) {
	return func(s string) (string, error) { return s, check(s) }
}

// checkEndpoint checks a listener URL.
func checkEndpoint(u string) error {
	_, err := httpapi.ParseEndpoint(u)
	return err
}

// maxEventJournalSize bounds --event-journal-size: the journal keeps its
// events in memory too, about 300 bytes each.
const maxEventJournalSize = 1_000_000

// errHelp and errVersion end the program early with status 0.
var (
	errHelp    = errors.New("help requested")
	errVersion = errors.New("version requested")
)

// listValue collects a repeatable flag.
type listValue struct{ vals []string }

func (l *listValue) String() string     { return strings.Join(l.vals, ",") }
func (l *listValue) Set(v string) error { l.vals = append(l.vals, v); return nil }

// loadConfig resolves the settings from args, the environment (getenv) and
// the kernel command line; warn is told of lenient values it ignored.
func loadConfig(args []string, getenv func(string) string, usageOut io.Writer, warn func(msg string, args ...any)) (*config, error) {
	c := &config{Sources: map[string]string{}}
	settings := c.settings()
	fs := flag.NewFlagSet("arcbox-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	values := map[string]*string{}
	lists := map[string]*listValue{}
	for _, s := range settings {
		switch {
		case s.repeatable:
			lists[s.name] = &listValue{}
			fs.Var(lists[s.name], s.name, s.usage)
		case s.isBool:
			values[s.name] = new(string)
			fs.Var(&optionalBool{dst: values[s.name]}, s.name, s.usage)
		default:
			values[s.name] = fs.String(s.name, "", s.usage)
		}
	}
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(usageOut)
			return nil, errHelp
		}
		return nil, fmt.Errorf("%w (see --help)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	if *version {
		return nil, errVersion
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	var cmdline map[string]string
	for _, s := range settings {
		// The sources that give this setting a value, highest first.
		type candidate struct{ value, source string }
		var cands []candidate
		switch {
		case given[s.name] && s.repeatable:
			cands = append(cands, candidate{strings.Join(lists[s.name].vals, ","), "flag"})
		case given[s.name]:
			cands = append(cands, candidate{*values[s.name], "flag"})
		}
		if v := getenv(envName(s.name)); v != "" {
			cands = append(cands, candidate{v, "env " + envName(s.name)})
		}
		if s.cmdline != "" {
			if cmdline == nil {
				cmdline = readCmdline(c.CmdlineFile)
			}
			if v, ok := cmdline[s.cmdline]; ok {
				cands = append(cands, candidate{v, "kernel command line " + s.cmdline})
			}
		}
		applied := false
		for _, cand := range cands {
			err := s.set(cand.value)
			if err == nil {
				c.Sources[s.name], applied = cand.source, true
				break
			}
			if !s.lenient || cand.source == "flag" {
				return nil, fmt.Errorf("--%s from %s: %w", s.name, cand.source, err)
			}
			warn("ignoring a bad setting", "setting", s.name, "source", cand.source, "err", err)
		}
		if applied {
			continue
		}
		if err := s.set(s.defaultValue()); err != nil {
			return nil, fmt.Errorf("--%s default: %w", s.name, err)
		}
		c.Sources[s.name] = "default"
	}
	return c, nil
}

// readCmdline returns the arcbox.* keys of the kernel command line; the
// first non-empty value of a key wins, as in the seed agent.
func readCmdline(path string) map[string]string {
	out := map[string]string{}
	data, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, tok := range cmdlineArgs(string(data)) {
		k, v, ok := strings.Cut(tok, "=")
		if !ok || v == "" || !strings.HasPrefix(k, "arcbox.") {
			continue
		}
		if _, seen := out[k]; !seen {
			out[k] = v
		}
	}
	return out
}

// cmdlineArgs splits a kernel command line as the kernel does (next_arg
// in lib/cmdline.c): at white space outside double quotes, with the quotes
// around a value (or a whole argument) taken off, so that
// arcbox.docker_data_device="/dev/my disk" is one argument. A "--" ends
// the kernel's arguments: what follows is init's, not ours.
func cmdlineArgs(s string) []string {
	var out []string
	for {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
		if s == "" {
			return out
		}
		end, inQuote := len(s), false
		for i, r := range s {
			if unicode.IsSpace(r) && !inQuote {
				end = i
				break
			}
			if r == '"' {
				inQuote = !inQuote
			}
		}
		arg := s[:end]
		s = s[end:]
		if arg == "--" {
			return out
		}
		if k, v, ok := strings.Cut(arg, "="); ok && strings.HasPrefix(v, `"`) {
			v = strings.TrimPrefix(v, `"`)
			arg = k + "=" + strings.TrimSuffix(v, `"`)
		} else if strings.HasPrefix(arg, `"`) {
			arg = strings.TrimSuffix(strings.TrimPrefix(arg, `"`), `"`)
		}
		out = append(out, arg)
	}
}

// lookupGroup resolves --socket-group: a GID, or a group name.
func lookupGroup(v string) (int, error) {
	if gid, err := strconv.ParseUint(v, 10, 31); err == nil {
		return int(gid), nil
	}
	g, err := user.LookupGroup(v)
	if err != nil {
		return 0, fmt.Errorf("%q is neither a GID nor a known group: %w", v, err)
	}
	return strconv.Atoi(g.Gid)
}

// checkRegistry checks a --registry value: a host (name or IP, IPv6 in
// brackets) with an optional port, as in an image reference, without a
// scheme or a path.
func checkRegistry(r string) error {
	bad := func(why string) error {
		return fmt.Errorf("registry %q: %s; want HOST[:PORT], such as registry.example.com or 127.0.0.1:5000", r, why)
	}
	if strings.Contains(r, "://") {
		return bad("no scheme")
	}
	if strings.ContainsAny(r, "/@?# \t") {
		return bad("a host and port alone")
	}
	host := r
	if h, port, err := net.SplitHostPort(r); err == nil {
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return bad("the port is not a number from 1 to 65535")
		}
		host = h
	} else if strings.HasPrefix(r, "[") && strings.HasSuffix(r, "]") {
		host = r[1 : len(r)-1]
	} else if strings.ContainsAny(r, "[]:") {
		return bad("an IPv6 address goes in brackets, and a port after a colon")
	}
	if host == "" {
		return bad("no host")
	}
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// optionalBool is a boolean flag that may be given bare (--set-clock) or
// with a value (--set-clock=false); the value is checked when applied.
type optionalBool struct{ dst *string }

func (b *optionalBool) String() string {
	if b == nil || b.dst == nil {
		return ""
	}
	return *b.dst
}
func (b *optionalBool) Set(v string) error {
	if v == "" {
		v = "true"
	}
	*b.dst = v
	return nil
}
func (b *optionalBool) IsBoolFlag() bool { return true }

func printUsage(w io.Writer) {
	fmt.Fprint(w, `arcbox-agent: the agent inside an arcbox VM, the host's way in.

Usage: arcbox-agent [flags]

Each setting is taken from its flag, else its environment variable, else the
kernel command line (where a key is given), else its default.

`)
	defaults := &config{}
	for _, s := range defaults.settings() {
		def := s.defaultValue()
		_ = s.set(def)
		name := "--" + s.name
		switch {
		case s.isBool:
			name += "[=BOOL]"
		case s.repeatable:
			name += " VALUE ..."
		default:
			name += " VALUE"
		}
		fmt.Fprintf(w, "  %s\n      %s\n      env %s", name, s.usage, envName(s.name))
		if s.repeatable {
			fmt.Fprint(w, " (comma-separated)")
		}
		if s.cmdline != "" {
			fmt.Fprintf(w, "; kernel command line %s=", s.cmdline)
		}
		if def != "" {
			fmt.Fprintf(w, "; default %s", def)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprint(w, "  --version\n      print the version and exit\n")
}
