package shares

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/disk"
)

// Share is a share as it is mounted.
type Share struct {
	Tag, Path string
	// Options are the mount's options as /proc/self/mountinfo shows them:
	// the mount's own, then those of its superblock that add to them
	// (dax=always).
	Options string
	// DAX: file pages are mapped from the host's cache window (dax=always)
	// instead of copied into the guest's page cache.
	DAX bool
	// MountedByAgent: the agent made this mount, and Unmount undoes it; a
	// share the boot mounted is left to the boot.
	MountedByAgent bool

	mountID  int      // the mount's id in mountinfo, so Unmount unmounts this mount and no other
	madeDirs []string // the directories made for the mount point, outermost first
}

// Ops are the system calls a Mounter makes: the seams tests fake.
type Ops struct {
	// Mount mounts the virtiofs tag on path with flags and the file
	// system's data options ("" for none).
	Mount func(tag, path string, flags Flags, data string) error
	// Unmount unmounts the mount on path, failing (EBUSY) while it is in
	// use: never lazily.
	Unmount func(path string) error
	// Mkdir makes one directory, mode 0755; one that exists is an error
	// matching fs.ErrExist.
	Mkdir func(path string) error
	// Rmdir removes an empty directory.
	Rmdir func(path string) error
	// MountInfo reads /proc/self/mountinfo.
	MountInfo func() ([]disk.MountInfo, error)
	// Tags tells which tags the VM has (ReadTags).
	Tags func() (TagInfo, error)
}

// Mounter mounts and unmounts shares.
type Mounter struct {
	Ops Ops // every one required; System in production
	// Logger receives what happens to each share; nil discards it.
	Logger *slog.Logger
}

// NewMounter returns the Mounter of the running system, logging to logger
// as the "shares" component.
func NewMounter(logger *slog.Logger) *Mounter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Mounter{Ops: System, Logger: logger.With("component", "shares")}
}

func (m *Mounter) log() *slog.Logger {
	if m.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Logger
}

// MountAll mounts each spec's share, in order, and returns the shares that
// are mounted, by the agent or before it. It never fails: a tag the VM
// does not have is a debug line, a share that cannot be mounted a warning
// with the reason, and the agent goes on without it.
//
// A mount point is made (0755, with its missing parents) only to mount a
// tag the VM has, and removed again if the mount fails; so a machine that
// is no VM, such as a developer's, gets no /Users at its root.
func (m *Mounter) MountAll(specs []Spec) []Share {
	log := m.log()
	tags, err := m.Ops.Tags()
	if err != nil {
		log.Warn("cannot tell which VirtioFS tags the VM has; mounting each share to find out", "err", err)
		tags = TagInfo{Devices: -1}
	}
	var out []Share
	for _, spec := range specs {
		if sh, ok := m.mountShare(spec, tags, log.With("tag", spec.Tag, "path", spec.Path)); ok {
			out = append(out, sh)
		}
	}
	return out
}

// mountShare mounts one share, or finds it mounted.
func (m *Mounter) mountShare(spec Spec, tags TagInfo, log *slog.Logger) (Share, bool) {
	flags, dax, err := resolve(spec.Options)
	if err != nil {
		log.Warn("VirtioFS share not mounted", "err", err)
		return Share{}, false
	}
	mounts := m.mounts(log)
	top := visibleMount(mounts, spec.Path)
	if top != nil && isShareRoot(*top, spec.Tag) {
		return m.adopt(spec, flags, dax, mounts, *top, log)
	}
	if tags.lacks(spec.Tag) {
		log.Debug("VirtioFS share not mounted: the VM has no such tag")
		return Share{}, false
	}
	if top != nil {
		log.Warn("VirtioFS share not mounted: its path is already a mount of something else",
			"fstype", top.FSType, "source", top.Source, "root", top.Root)
		return Share{}, false
	}
	made, err := m.makeDirs(spec.Path)
	if err != nil {
		log.Warn("VirtioFS share not mounted", "err", err)
		return Share{}, false
	}
	data, err := m.mountWithFallback(spec, flags, dax, log)
	if err != nil {
		m.removeDirs(made, log)
		// Without the kernel's listing, a tag no device has is only told
		// by the mount's EINVAL (virtio_fs_get_tree: "tag <%s> not
		// found"). EINVAL can mean something else too (the device going
		// away during the mount), but with flags and data this package
		// chose and the DAX data already dropped, a missing tag is by far
		// the likeliest; where the kernel lists its tags, the tag was
		// there and EINVAL is a failure like any other.
		if errors.Is(err, unix.EINVAL) && !tags.Listed {
			log.Debug("VirtioFS share not mounted: the VM has no such tag, judging by the mount's EINVAL", "err", err)
			return Share{}, false
		}
		log.Warn("VirtioFS share not mounted", "err", err)
		return Share{}, false
	}
	sh := m.describe(spec, flags, dax, data, log)
	sh.MountedByAgent, sh.madeDirs = true, made
	log.Info("VirtioFS share mounted", "options", sh.Options, "dax", sh.DAX)
	return sh, true
}

// adopt takes a share that is mounted already (by the boot, or by an agent
// before this one) as it is, unless it lacks the DAX mode asked for. A
// second mount of a tag cannot bring DAX: it shares the first mount's
// superblock, options and all (virtio_fs_get_tree finds it with sget_fc,
// and never reads the new data), and virtiofs has no remount that changes
// them. So the boot's mount is unmounted, when nothing uses it and it is
// the tag's only one, and the share mounted afresh, with DAX if the kernel
// takes it and without if not.
func (m *Mounter) adopt(spec Spec, flags Flags, dax string, mounts []disk.MountInfo, cur disk.MountInfo, log *slog.Logger) (Share, bool) {
	keep := shareOf(spec.Tag, cur)
	have := mountedDAX(cur.SuperOptions)
	if dax == "" || have == dax {
		log.Info("VirtioFS share already mounted", "options", keep.Options, "dax", keep.DAX)
		return keep, true
	}
	if others := otherMounts(mounts, cur); len(others) > 0 {
		log.Info("VirtioFS share left as it was mounted, without the DAX mode asked for: the tag is mounted elsewhere too, and a new mount would share its options",
			"dax", dax, "mounted_dax", have, "also_at", others)
		return keep, true
	}
	if err := m.Ops.Unmount(spec.Path); err != nil {
		log.Info("VirtioFS share left as it was mounted, without the DAX mode asked for: it cannot be unmounted to mount it again",
			"dax", dax, "mounted_dax", have, "err", err)
		return keep, true
	}
	data, err := m.mountWithFallback(spec, flags, dax, log)
	if err != nil {
		log.Warn("VirtioFS share lost: its mount was undone to mount it with DAX, and mounting it again failed", "err", err)
		return Share{}, false
	}
	sh := m.describe(spec, flags, dax, data, log)
	sh.MountedByAgent = true
	log.Info("VirtioFS share mounted again, replacing the mount it had", "options", sh.Options, "dax", sh.DAX)
	return sh, true
}

// mountWithFallback mounts the share with the data that asks for its DAX
// mode, and when the kernel refuses that (EINVAL: no cache window on the
// device, as with QEMU's vhost-user-fs, or a kernel without FUSE_DAX or
// without that spelling; EOPNOTSUPP), without any. It returns the data the
// mount took.
func (m *Mounter) mountWithFallback(spec Spec, flags Flags, dax string, log *slog.Logger) (string, error) {
	var refused error
	for _, data := range daxData(dax) {
		err := m.Ops.Mount(spec.Tag, spec.Path, flags, data)
		if err == nil {
			return data, nil
		}
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
			return "", mountError(spec, flags, data, err)
		}
		if refused == nil {
			refused = mountError(spec, flags, data, err)
		}
	}
	if err := m.Ops.Mount(spec.Tag, spec.Path, flags, ""); err != nil {
		return "", mountError(spec, flags, "", err)
	}
	if refused != nil {
		log.Info("VirtioFS share mounted without DAX: the kernel refused it (the device may have no cache window)", "dax", dax, "err", refused)
	}
	return "", nil
}

func mountError(spec Spec, flags Flags, data string, err error) error {
	opts := flags.String()
	if data != "" {
		opts += "," + data
	}
	if errors.Is(err, unix.ENODEV) {
		// mount(2)'s ENODEV: no such file system type.
		return fmt.Errorf("mount virtiofs %s on %s (%s): %w (the kernel has no virtiofs: load its module, with arcbox.modules=virtiofs say)", spec.Tag, spec.Path, opts, err)
	}
	return fmt.Errorf("mount virtiofs %s on %s (%s): %w", spec.Tag, spec.Path, opts, err)
}

// describe returns the share as mounted on spec.Path a moment ago, which
// the mount data took.
func (m *Mounter) describe(spec Spec, flags Flags, dax, data string, log *slog.Logger) Share {
	mounts := m.mounts(log)
	top := visibleMount(mounts, spec.Path)
	if top == nil || !isShareRoot(*top, spec.Tag) {
		// No mount table to read: say what was asked for.
		opts := flags.String()
		if data != "" {
			opts += "," + data
		}
		return Share{Tag: spec.Tag, Path: spec.Path, Options: opts, DAX: mountedDAX(data) == daxAlways}
	}
	if data != "" && mountedDAX(top.SuperOptions) != dax {
		log.Info("VirtioFS share mounted without the DAX mode asked for: the tag is mounted elsewhere too, and its mounts share the first one's options",
			"dax", dax, "also_at", otherMounts(mounts, *top))
	}
	return shareOf(spec.Tag, *top)
}

// mounts reads the mount table; without one, every share is taken to be
// unmounted, and the mount itself will tell.
func (m *Mounter) mounts(log *slog.Logger) []disk.MountInfo {
	mounts, err := m.Ops.MountInfo()
	if err != nil {
		log.Warn("cannot read the mount table; mounting the share regardless", "err", err)
	}
	return mounts
}

// makeDirs makes path and its missing parents, and returns the ones it
// made, outermost first.
func (m *Mounter) makeDirs(path string) ([]string, error) {
	var dirs []string
	for p := path; p != "/" && p != "."; p = filepath.Dir(p) {
		dirs = append(dirs, p)
	}
	slices.Reverse(dirs)
	var made []string
	for _, d := range dirs {
		err := m.Ops.Mkdir(d)
		switch {
		case err == nil:
			made = append(made, d)
		case errors.Is(err, fs.ErrExist):
		default:
			m.removeDirs(made, m.log())
			return nil, fmt.Errorf("make mount point %s: %w", path, err)
		}
	}
	return made, nil
}

// removeDirs removes the directories makeDirs made, innermost first; one
// that is not empty any more stays.
func (m *Mounter) removeDirs(made []string, log *slog.Logger) {
	for _, d := range slices.Backward(made) {
		if err := m.Ops.Rmdir(d); err != nil {
			log.Debug("mount point left in place", "dir", d, "err", err)
		}
	}
}

// Unmount unmounts the shares the agent mounted, in the reverse order of
// their mounting, and removes the mount points it made for them; shares
// mounted before the agent are left alone. A share covered by a later
// mount, or moved, is not unmounted (that would unmount the later one);
// one that is gone already is skipped. The errors are joined, each naming
// its share's path.
func (m *Mounter) Unmount(shares []Share) error {
	log := m.log()
	var errs []error
	for _, sh := range slices.Backward(shares) {
		if !sh.MountedByAgent {
			continue
		}
		if err := m.unmountShare(sh, log.With("tag", sh.Tag, "path", sh.Path)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Mounter) unmountShare(sh Share, log *slog.Logger) error {
	if mounts, err := m.Ops.MountInfo(); err == nil && sh.mountID != 0 {
		if !slices.ContainsFunc(mounts, func(mi disk.MountInfo) bool { return mi.ID == sh.mountID }) {
			log.Debug("VirtioFS share unmounted already")
			m.removeDirs(sh.madeDirs, log)
			return nil
		}
		if top := visibleMount(mounts, sh.Path); top == nil || top.ID != sh.mountID {
			return fmt.Errorf("unmount share %s at %s: another mount covers it, or it was moved", sh.Tag, sh.Path)
		}
	}
	if err := m.Ops.Unmount(sh.Path); err != nil {
		return fmt.Errorf("unmount share %s at %s: %w", sh.Tag, sh.Path, err)
	}
	m.removeDirs(sh.madeDirs, log)
	log.Info("VirtioFS share unmounted")
	return nil
}

// visibleMount returns the mount on path that is seen there: the last one
// when several are stacked.
func visibleMount(mounts []disk.MountInfo, path string) *disk.MountInfo {
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].MountPoint == path {
			return &mounts[i]
		}
	}
	return nil
}

// isShareRoot reports whether mi mounts the whole share tag, not a
// directory of it bind-mounted.
func isShareRoot(mi disk.MountInfo, tag string) bool {
	return mi.FSType == "virtiofs" && mi.Source == tag && mi.Root == "/"
}

// otherMounts lists where else the superblock mounted by cur is mounted.
func otherMounts(mounts []disk.MountInfo, cur disk.MountInfo) []string {
	var out []string
	for _, mi := range mounts {
		if mi.ID != cur.ID && mi.Major == cur.Major && mi.Minor == cur.Minor {
			out = append(out, mi.MountPoint)
		}
	}
	return out
}

// shareOf describes the share tag mounted as mi.
func shareOf(tag string, mi disk.MountInfo) Share {
	return Share{
		Tag:     tag,
		Path:    mi.MountPoint,
		Options: mergeOptions(mi.Options, mi.SuperOptions),
		DAX:     mountedDAX(mi.SuperOptions) == daxAlways,
		mountID: mi.ID,
	}
}

// mergeOptions is a mount's own options followed by the superblock's that
// are not among them (ro and rw appear in both).
func mergeOptions(mount, super string) string {
	opts := strings.Split(mount, ",")
	for _, o := range strings.Split(super, ",") {
		if o != "" && o != "ro" && o != "rw" && !slices.Contains(opts, o) {
			opts = append(opts, o)
		}
	}
	return strings.Join(opts, ",")
}

// readMountInfo reads a mountinfo file.
func readMountInfo(path string) ([]disk.MountInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mounts, err := disk.ParseMountInfo(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return mounts, nil
}
