package disk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
)

// Defaults for the empty Config fields.
const (
	DefaultMountPoint    = "/run/arcbox/data"
	DefaultStateDir      = "/run/arcbox/disk"
	DefaultMountInfoPath = "/proc/self/mountinfo"
	DefaultSysDir        = "/sys"
	DefaultDevDir        = "/dev"

	// MountOptions are the btrfs options of every mount Ensure makes.
	MountOptions = "compress=zstd:3"
)

// Subvolume is a btrfs subvolume of the data volume and where it is mounted.
type Subvolume struct {
	Name   string // subvolume name in the volume's top level, such as "@docker"
	Target string // absolute path it is mounted on, such as "/var/lib/docker"
}

// DefaultSubvolumes returns the subvolumes containerd and dockerd need.
func DefaultSubvolumes() []Subvolume {
	return []Subvolume{
		{Name: "@docker", Target: "/var/lib/docker"},
		{Name: "@containerd", Target: "/var/lib/containerd"},
	}
}

// Config describes a data volume. Device is required; every other field has
// a default used when it is left zero. All paths must be absolute.
type Config struct {
	// Device is the data device: a block device, or a regular image file
	// that Ensure attaches to a loop device of its own.
	Device string
	// Wipe lets Ensure format a device carrying foreign data (another
	// filesystem, a partition table, unknown bytes). It never reformats a
	// complete btrfs. It is the operator's --wipe-data-device setting.
	Wipe bool
	// MountPoint is where the top level of the volume is mounted
	// (DefaultMountPoint).
	MountPoint string
	// Subvolumes are created if missing and mounted on their targets.
	// Nil means DefaultSubvolumes(); an empty, non-nil slice means none.
	Subvolumes []Subvolume
	// StateDir holds the format intent journal (DefaultStateDir).
	StateDir string
	// MkfsPath is the mkfs.btrfs binary; "" looks it up on PATH, then in
	// /sbin and /usr/sbin.
	MkfsPath string
	// MountInfoPath is read to learn what is mounted
	// (DefaultMountInfoPath).
	MountInfoPath string
	// SysDir and DevDir are the roots of sysfs and of the device nodes,
	// used to find and attach loop devices (DefaultSysDir, DefaultDevDir).
	SysDir, DevDir string
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// Volume sets up and reports on the data volume described by a Config.
// Its methods are safe for concurrent use.
type Volume struct {
	cfg     Config
	log     *slog.Logger
	journal journal

	ensureMu sync.Mutex // serialises Ensure

	stateMu sync.Mutex // guards the fields below; never held across I/O
	phase   string     // what Ensure is doing now, "" when idle
	lastSig Signature  // what Ensure last found on the device
	lastErr error      // the result of the last Ensure
}

// NewVolume checks cfg, fills in its defaults and returns a Volume. It
// touches nothing on the machine.
func NewVolume(cfg Config) (*Volume, error) {
	cfg = withDefaults(cfg)
	if err := validate(cfg); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Volume{
		cfg:     cfg,
		log:     log.With("component", "disk", "device", cfg.Device),
		journal: journal{path: filepath.Join(cfg.StateDir, journalName)},
	}, nil
}

func withDefaults(cfg Config) Config {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&cfg.MountPoint, DefaultMountPoint)
	def(&cfg.StateDir, DefaultStateDir)
	def(&cfg.MountInfoPath, DefaultMountInfoPath)
	def(&cfg.SysDir, DefaultSysDir)
	def(&cfg.DevDir, DefaultDevDir)
	if cfg.Subvolumes == nil {
		cfg.Subvolumes = DefaultSubvolumes()
	}
	cfg.Subvolumes = append([]Subvolume(nil), cfg.Subvolumes...)
	for _, p := range []*string{&cfg.Device, &cfg.MountPoint, &cfg.StateDir, &cfg.MountInfoPath, &cfg.SysDir, &cfg.DevDir} {
		*p = cleanAbs(*p)
	}
	for i := range cfg.Subvolumes {
		cfg.Subvolumes[i].Target = cleanAbs(cfg.Subvolumes[i].Target)
	}
	return cfg
}

// cleanAbs cleans an absolute path and leaves anything else for validate to
// reject.
func cleanAbs(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return p
}

func validate(cfg Config) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, ErrInvalidConfig)...)
	}
	if cfg.Device == "" {
		return bad("no data device")
	}
	paths := map[string]string{
		"device": cfg.Device, "mount point": cfg.MountPoint, "state dir": cfg.StateDir,
		"mountinfo path": cfg.MountInfoPath, "sys dir": cfg.SysDir, "dev dir": cfg.DevDir,
	}
	if cfg.MkfsPath != "" {
		paths["mkfs path"] = cfg.MkfsPath
	}
	for what, p := range paths {
		if !filepath.IsAbs(p) {
			return bad("%s %q is not an absolute path", what, p)
		}
	}
	names, targets := map[string]bool{}, map[string]bool{}
	for _, sv := range cfg.Subvolumes {
		if err := validSubvolumeName(sv.Name); err != nil {
			return bad("subvolume %q: %v", sv.Name, err)
		}
		if !filepath.IsAbs(sv.Target) {
			return bad("subvolume %s: target %q is not an absolute path", sv.Name, sv.Target)
		}
		if Within(sv.Target, cfg.MountPoint) || Within(cfg.MountPoint, sv.Target) {
			return bad("subvolume %s: target %s overlaps the mount point %s", sv.Name, sv.Target, cfg.MountPoint)
		}
		if names[sv.Name] || targets[sv.Target] {
			return bad("subvolume %s -> %s: name or target used twice", sv.Name, sv.Target)
		}
		names[sv.Name], targets[sv.Target] = true, true
	}
	return nil
}

// validSubvolumeName accepts a single path element that can also be passed
// in a subvol= mount option.
func validSubvolumeName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return errors.New("empty, '.' or '..'")
	case len(name) > 255:
		return errors.New("longer than 255 bytes")
	case strings.ContainsAny(name, "/,\x00"):
		return errors.New("contains '/', ',' or NUL")
	}
	return nil
}

// Within reports whether path is dir or inside it; both are clean and
// absolute.
func Within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// Ensure makes the data volume ready: it finds or attaches the device,
// formats it when it is blank (or when Wipe allows), mounts it, creates the
// missing subvolumes and mounts them. What is mounted already is left alone,
// so Ensure is idempotent; concurrent calls run one after the other. The
// note says what was done, for the start log.
func (v *Volume) Ensure(ctx context.Context) (note string, err error) {
	v.ensureMu.Lock()
	defer v.ensureMu.Unlock()
	v.setPhase("starting")
	note, err = v.ensure(ctx)
	v.stateMu.Lock()
	v.phase, v.lastErr = "", err
	v.stateMu.Unlock()
	if err != nil {
		v.log.Error("data volume not ready", "err", err)
	} else {
		v.log.Info("data volume ready", "note", note)
	}
	return note, err
}

// Unmount undoes Ensure's mounts for a clean shutdown: each subvolume,
// last first, then the top level (a loop device the agent attached goes
// with it: it is autoclear). It touches only mounts of the volume's own
// device where the configuration puts them, and returns the paths it
// unmounted; a busy mount is an error naming it, and the top level is then
// left mounted. Nothing mounted is not an error.
func (v *Volume) Unmount() ([]string, error) {
	v.ensureMu.Lock()
	defer v.ensureMu.Unlock()
	done, err := v.unmount()
	if len(done) > 0 {
		v.log.Info("data volume unmounted", "paths", done)
	}
	return done, err
}

func (v *Volume) setPhase(p string) {
	v.stateMu.Lock()
	v.phase = p
	v.stateMu.Unlock()
}

func (v *Volume) setSignature(s Signature) {
	v.stateMu.Lock()
	v.lastSig = s
	v.stateMu.Unlock()
}

// Status describes the data volume for the runtime status endpoint.
type Status struct {
	Device     string `json:"device"`
	Filesystem string `json:"filesystem"` // "btrfs" when mounted, else what Ensure last found ("" before it ran)
	Mounted    bool   `json:"mounted"`    // the top level and every subvolume are mounted
	FreeBytes  uint64 `json:"free_bytes"` // space available to unprivileged writers, when mounted
	Detail     string `json:"detail"`
}

// ServiceStatus is the data volume as one service of the runtime status.
type ServiceStatus struct {
	Name   string `json:"name"`   // always "data-volume"
	Status string `json:"status"` // ServiceReady, ServiceNotReady or ServiceError
	Detail string `json:"detail,omitempty"`
}

// Values of ServiceStatus.Status.
const (
	ServiceReady    = "ready"
	ServiceNotReady = "not_ready"
	ServiceError    = "error"
)

// Status reports the volume as mountinfo shows it now, with what the last
// Ensure found. It never touches the device and never waits for a running
// Ensure.
func (v *Volume) Status() Status {
	v.stateMu.Lock()
	phase, sig, lastErr := v.phase, v.lastSig, v.lastErr
	v.stateMu.Unlock()

	st := Status{Device: v.cfg.Device}
	if sig.Kind != "" {
		st.Filesystem = string(sig.Kind)
	}
	mounts, err := readMountInfo(v.cfg.MountInfoPath)
	if err != nil {
		st.Detail = err.Error()
		return st
	}
	missing, raw := v.missingMounts(mounts)
	switch {
	case len(missing) == 0:
		st.Mounted, st.Filesystem = true, "btrfs"
		st.Detail = v.mountedDetail(raw.Source)
		if free, err := freeBytes(v.cfg.MountPoint); err == nil {
			st.FreeBytes = free
		} else {
			st.Detail += "; free space unknown: " + err.Error()
		}
	case phase != "":
		st.Detail = "ensure in progress: " + phase
	case lastErr != nil:
		st.Detail = lastErr.Error()
	default:
		st.Detail = "not mounted: " + strings.Join(missing, ", ")
	}
	return st
}

// ServiceStatus condenses Status into the runtime's service form: error
// when the last Ensure failed, ready when everything is mounted, not_ready
// otherwise.
func (v *Volume) ServiceStatus() ServiceStatus {
	v.stateMu.Lock()
	failed := v.lastErr != nil && v.phase == ""
	v.stateMu.Unlock()
	st := v.Status()
	s := ServiceStatus{Name: "data-volume", Status: ServiceNotReady, Detail: st.Detail}
	switch {
	case failed:
		s.Status = ServiceError
	case st.Mounted:
		s.Status = ServiceReady
	}
	return s
}

// missingMounts lists the paths that lack their btrfs mount, judged from
// mountinfo alone, and returns the top-level mount if present.
func (v *Volume) missingMounts(mounts []MountInfo) (missing []string, raw *MountInfo) {
	raw = findMount(mounts, resolvePath(v.cfg.MountPoint))
	if raw == nil || raw.FSType != "btrfs" || raw.Root != "/" {
		missing = append(missing, v.cfg.MountPoint)
	}
	for _, sv := range v.cfg.Subvolumes {
		m := findMount(mounts, resolvePath(sv.Target))
		if m == nil || m.FSType != "btrfs" || m.Root != "/"+sv.Name {
			missing = append(missing, sv.Target)
		}
	}
	return missing, raw
}

func (v *Volume) mountedDetail(source string) string {
	parts := []string{fmt.Sprintf("btrfs on %s mounted at %s", source, v.cfg.MountPoint)}
	for _, sv := range v.cfg.Subvolumes {
		parts = append(parts, fmt.Sprintf("%s at %s", sv.Name, sv.Target))
	}
	return strings.Join(parts, "; ")
}

// resolvePath returns path with its symbolic links resolved when it
// exists, as mountinfo shows mount points.
func resolvePath(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		return p
	}
	return path
}

// action is what Ensure does with a device, decided by plan.
type action int

const (
	actMount    action = iota // a complete btrfs: mount it
	actFormat                 // blank: mkfs.btrfs without -f, so its own checks stay on
	actReformat               // overwrite what is there: mkfs.btrfs -f
)

// plan decides from what the device carries, whether the format intent
// journal names this device, and the Wipe setting. It refuses with an error
// wrapping ErrForeignFilesystem.
//
//	complete btrfs                         mount (see mountFailed for a failure)
//	blank                                  format
//	incomplete btrfs, unknown data         reformat if intent or Wipe, else refuse
//	other filesystem or partition table    reformat if Wipe, else refuse
//
// The journal alone never authorises erasing a filesystem Detect can name:
// an interrupted format leaves only blank, unknown or incomplete-btrfs
// areas behind, so those are what it may repair.
func plan(sig Signature, intent, wipe bool) (action, error) {
	switch sig.Kind {
	case KindBtrfs:
		return actMount, nil
	case KindBlank:
		return actFormat, nil
	case KindBtrfsIncomplete, KindUnknown:
		if intent || wipe {
			return actReformat, nil
		}
	default:
		if wipe {
			return actReformat, nil
		}
	}
	what := sig.String()
	if sig.Kind == KindBtrfsIncomplete {
		what += ", left by an interrupted mkfs.btrfs this agent has no record of"
	}
	return 0, fmt.Errorf("carries %s; refusing to format it; %s: %w", what, wipeHint, ErrForeignFilesystem)
}
