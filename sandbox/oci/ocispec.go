package oci

import (
	"maps"
	"slices"
	"sort"

	"github.com/arcbox/arcbox-agent/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Where the init binary appears in a sandbox, and how it is called.
const (
	initMountPoint = "/.arcbox/init"
	initArg        = "sandbox-init"
)

// defaultPath is PATH for processes whose image and request set none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// cpuPeriod is the CFS period the vCPU quota is counted in (100 ms).
const cpuPeriod = 100000

// bundleParams is what a sandbox's OCI spec is made of.
type bundleParams struct {
	ID          string
	InitPath    string // host path of the init binary
	Limits      sandbox.Limits
	Mounts      []sandbox.Mount
	CgroupsPath string
	Cgroup2     bool // the host runs cgroup v2: give the sandbox a cgroup namespace
	// NetnsPath, when set, is the network namespace to join (a bridged
	// sandbox's); else the sandbox gets a new one with only loopback.
	NetnsPath string
	// ResolvConf, when set, is bound read-only on /etc/resolv.conf.
	ResolvConf string
	// sandbox.IDMap, when its Size is not 0, gives the sandbox a user namespace
	// of that mapping.
	IDMap sandbox.IDMap
	// ReadOnlyRootfs mounts the root read-only, with a tmpfs on /tmp.
	ReadOnlyRootfs bool
}

// buildSpec makes the OCI spec of a sandbox whose root filesystem is the
// bundle's "rootfs" directory and whose process 1 is the init. Each
// Mounts' Source is what the runtime binds: the caller's checked open
// file of it (a /proc/<pid>/fd/<n> path), never a path that could change.
func buildSpec(p bundleParams) (*specs.Spec, error) {
	// The init is a Go program: keep its runtime from holding the
	// sandbox's cgroup files open to track GOMAXPROCS.
	initEnv := []string{"PATH=" + defaultPath, "GODEBUG=cgroupgomaxprocs=0,updatemaxprocs=0"}
	init := processSpec([]string{initMountPoint, initArg}, initEnv, "/", execUser{Home: "/root"}, false)
	sysfs := specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}}
	if p.IDMap.Size > 0 && p.NetnsPath != "" {
		// A user namespace may mount sysfs only in a network namespace
		// it owns, and a bridged sandbox's is made by the agent: bind
		// the guest's instead, with what is mounted below it (the kernel
		// binds those along, as a user namespace may not uncover what
		// they hide), all read-only, masked as a sysfs of its own would be.
		sysfs = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "rro", "nosuid", "noexec", "nodev"}}
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		sysfs,
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		{Destination: initMountPoint, Type: "bind", Source: p.InitPath, Options: []string{"bind", "ro", "nosuid", "nodev"}},
	}
	for _, m := range p.Mounts {
		// nosuid, nodev: a sandbox with host users has real CHOWN and
		// FSETID, and must not leave a set-id binary for the guest.
		opts := []string{"rbind", "rprivate", "nosuid", "nodev"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		}
		mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: opts})
	}
	if p.ReadOnlyRootfs {
		mounts = append(mounts, specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", "size=65536k"}})
	}
	if p.ResolvConf != "" {
		mounts = append(mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: p.ResolvConf, Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}})
	}
	quota := int64(p.Limits.VCPUs) * cpuPeriod
	period := uint64(cpuPeriod)
	memory := p.Limits.MemoryMiB << 20
	pids := p.Limits.Pids
	namespaces := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace, Path: p.NetnsPath}, {Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
	}
	var idmaps []specs.LinuxIDMapping
	if p.IDMap.Size > 0 {
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		idmaps = []specs.LinuxIDMapping{{ContainerID: 0, HostID: p.IDMap.HostID, Size: p.IDMap.Size}}
	}
	seccomp, err := seccompProfile(init.Capabilities.Bounding)
	if err != nil {
		return nil, err
	}
	if p.Cgroup2 {
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	hostname := p.ID
	if len(hostname) > 63 {
		hostname = hostname[:63]
	}
	return &specs.Spec{
		Version:  "1.0.2",
		Process:  &init,
		Root:     &specs.Root{Path: "rootfs", Readonly: p.ReadOnlyRootfs},
		Hostname: hostname,
		Mounts:   mounts,
		Linux: &specs.Linux{
			CgroupsPath: p.CgroupsPath,
			UIDMappings: idmaps,
			GIDMappings: idmaps,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Memory:  &specs.LinuxMemory{Limit: &memory},
				CPU:     &specs.LinuxCPU{Quota: &quota, Period: &period},
				Pids:    &specs.LinuxPids{Limit: &pids},
			},
			Namespaces: namespaces,
			Seccomp:    seccomp,
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
				"/sys/firmware", "/sys/devices/virtual/powercap",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}, nil
}

// processSpec is the OCI process for args run as u. Root gets the default
// capabilities; another user only keeps them in its bounding set, as in
// Docker. No process may gain privileges (setuid binaries, file caps).
func processSpec(args, env []string, cwd string, u execUser, tty bool) specs.Process {
	caps := &specs.LinuxCapabilities{Bounding: sandbox.DefaultCapabilities()}
	if u.UID == 0 {
		caps.Effective = sandbox.DefaultCapabilities()
		caps.Permitted = sandbox.DefaultCapabilities()
	}
	return specs.Process{
		Terminal: tty,
		User: specs.User{
			UID:            u.UID,
			GID:            u.GID,
			AdditionalGids: slices.Clone(u.AdditionalGIDs),
		},
		Args:            args,
		Env:             env,
		Cwd:             cwd,
		Capabilities:    caps,
		NoNewPrivileges: true,
		Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: nofile, Soft: nofile}},
	}
}

// nofile is the open-file limit of sandbox processes: 65536, or the
// agent's own hard limit when that is lower (raising it past that needs
// CAP_SYS_RESOURCE, which the agent may lack).
var nofile = nofileLimit(65536)

// processEnv is a process's environment: PATH and HOME, then the image's,
// the sandbox's and the process's variables, each over the one before.
func processEnv(image []string, sandbox, process map[string]string, home string, tty bool) []string {
	base := map[string]string{"PATH": defaultPath, "HOME": home}
	if tty {
		base["TERM"] = "xterm"
	}
	for _, kv := range image {
		k, v, ok := cutEnv(kv)
		if ok {
			base[k] = v
		}
	}
	all := mergeEnv(base, sandbox, process)
	keys := slices.Collect(maps.Keys(all))
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+all[k])
	}
	return out
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], i > 0
		}
	}
	return "", "", false
}

// mergeEnv lays each map over the ones before it.
func mergeEnv(layers ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, l := range layers {
		maps.Copy(out, l)
	}
	return out
}
