package shares

import (
	"bytes"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/disk"
)

// fakeKernel models what the package relies on of Linux's virtiofs: an
// unknown tag is EINVAL; dax=always without a cache window is EINVAL; a
// tag's second mount shares the first one's superblock and so its DAX mode,
// whatever its data asked; a busy mount does not unmount.
type fakeKernel struct {
	devices   map[string]bool // tag: whether the device has a DAX cache window
	listed    bool            // the kernel lists its tags in sysfs (Linux 6.9+)
	legacyDAX bool            // Linux 5.10 to 5.16: "dax" alone, shown as ",dax"
	dirs      map[string]bool
	mounts    []disk.MountInfo
	busy      map[string]bool // paths whose mount is in use
	readOnly  bool            // mkdir fails with EROFS
	// failMount, when set, fails the mounts it returns an error for.
	failMount    func(tag, path, data string) error
	mountInfoErr error
	tagsErr      error
	nextID       int
	nextMinor    uint32
	calls        []string
}

func newFakeKernel(listed bool, devices map[string]bool) *fakeKernel {
	return &fakeKernel{
		devices: devices, listed: listed,
		dirs: map[string]bool{"/": true}, busy: map[string]bool{},
		nextID: 100, nextMinor: 40,
	}
}

// mounter returns a Mounter on the fake, logging at debug level to log.
func (k *fakeKernel) mounter(log *bytes.Buffer) *Mounter {
	return &Mounter{
		Ops: Ops{
			Mount: k.mount, Unmount: k.unmount, Mkdir: k.mkdir, Rmdir: k.rmdir,
			MountInfo: k.mountInfo, Tags: k.tags,
		},
		Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func (k *fakeKernel) mount(tag, path string, flags Flags, data string) error {
	k.calls = append(k.calls, strings.TrimSpace(fmt.Sprintf("mount %s %s %s %s", tag, path, flags, data)))
	if k.failMount != nil {
		if err := k.failMount(tag, path, data); err != nil {
			return err
		}
	}
	if !k.dirs[path] {
		return unix.ENOENT
	}
	window, ok := k.devices[tag]
	if !ok {
		return unix.EINVAL
	}
	mode := ""
	if data != "" {
		m, ok := daxOption(data)
		if !ok || k.legacyDAX && data != "dax" {
			return unix.EINVAL
		}
		mode = m
	}
	for _, mi := range k.mounts {
		if mi.FSType == "virtiofs" && mi.Source == tag {
			k.add(path, "/", "virtiofs", tag, flags, mi.Minor, mi.SuperOptions)
			return nil
		}
	}
	if mode == daxAlways && !window {
		return unix.EINVAL
	}
	super := "rw"
	switch {
	case mode != "" && k.legacyDAX:
		super += ",dax"
	case mode != "":
		super += ",dax=" + mode
	}
	k.nextMinor++
	k.add(path, "/", "virtiofs", tag, flags, k.nextMinor, super)
	return nil
}

func (k *fakeKernel) add(path, root, fstype, source string, flags Flags, minor uint32, super string) {
	opts := flags.String()
	if flags&atimes == 0 {
		opts += ",relatime"
	}
	k.nextID++
	k.mounts = append(k.mounts, disk.MountInfo{
		ID: k.nextID, ParentID: 1, Major: 0, Minor: minor, Root: root, MountPoint: path,
		Options: opts, FSType: fstype, Source: source, SuperOptions: super,
	})
}

func (k *fakeKernel) unmount(path string) error {
	k.calls = append(k.calls, "umount "+path)
	top := visibleMount(k.mounts, path)
	switch {
	case top == nil:
		return unix.EINVAL
	case k.busy[path]:
		return unix.EBUSY
	}
	k.mounts = slices.DeleteFunc(k.mounts, func(mi disk.MountInfo) bool { return mi.ID == top.ID })
	return nil
}

func (k *fakeKernel) mkdir(path string) error {
	k.calls = append(k.calls, "mkdir "+path)
	switch {
	case k.dirs[path]:
		return &fs.PathError{Op: "mkdir", Path: path, Err: unix.EEXIST}
	case !k.dirs[filepath.Dir(path)]:
		return &fs.PathError{Op: "mkdir", Path: path, Err: unix.ENOENT}
	case k.readOnly:
		return &fs.PathError{Op: "mkdir", Path: path, Err: unix.EROFS}
	}
	k.dirs[path] = true
	return nil
}

func (k *fakeKernel) rmdir(path string) error {
	k.calls = append(k.calls, "rmdir "+path)
	if visibleMount(k.mounts, path) != nil {
		return unix.EBUSY
	}
	for d := range k.dirs {
		if strings.HasPrefix(d, path+"/") {
			return unix.ENOTEMPTY
		}
	}
	delete(k.dirs, path)
	return nil
}

func (k *fakeKernel) mountInfo() ([]disk.MountInfo, error) {
	if k.mountInfoErr != nil {
		return nil, k.mountInfoErr
	}
	return slices.Clone(k.mounts), nil
}

func (k *fakeKernel) tags() (TagInfo, error) {
	if k.tagsErr != nil {
		return TagInfo{}, k.tagsErr
	}
	if k.listed {
		return TagInfo{Listed: true, Tags: slices.Sorted(maps.Keys(k.devices))}, nil
	}
	return TagInfo{Devices: len(k.devices)}, nil
}

// premount mounts what the boot mounted before the agent, out of the call
// record.
func (k *fakeKernel) premount(t *testing.T, tag, path, data string) {
	t.Helper()
	k.mkdirAll(path)
	if err := k.mount(tag, path, 0, data); err != nil {
		t.Fatalf("premount %s on %s: %v", tag, path, err)
	}
	k.calls = nil
}

// premountForeign mounts another file system on path.
func (k *fakeKernel) premountForeign(path, root, fstype, source string) {
	k.mkdirAll(path)
	k.nextMinor++
	k.add(path, root, fstype, source, 0, k.nextMinor, "rw")
}

func (k *fakeKernel) mkdirAll(path string) {
	for p := path; p != "/"; p = filepath.Dir(p) {
		k.dirs[p] = true
	}
}

// mountedAt returns the visible mount on path.
func (k *fakeKernel) mountedAt(path string) (disk.MountInfo, bool) {
	if mi := visibleMount(k.mounts, path); mi != nil {
		return *mi, true
	}
	return disk.MountInfo{}, false
}

// wantCalls compares the system calls made with want.
func (k *fakeKernel) wantCalls(t *testing.T, want ...string) {
	t.Helper()
	if !slices.Equal(k.calls, want) {
		t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(k.calls, "\n  "), strings.Join(want, "\n  "))
	}
}

// wantLogged checks that a line of the text log holds every fragment.
func wantLogged(t *testing.T, log *bytes.Buffer, fragments ...string) {
	t.Helper()
	for _, line := range strings.Split(log.String(), "\n") {
		if !slices.ContainsFunc(fragments, func(f string) bool { return !strings.Contains(line, f) }) {
			return
		}
	}
	t.Errorf("no log line has all of %q; the log:\n%s", fragments, log)
}

// wantNotLogged checks that no line of the log holds fragment.
func wantNotLogged(t *testing.T, log *bytes.Buffer, fragment string) {
	t.Helper()
	if strings.Contains(log.String(), fragment) {
		t.Errorf("the log has %q:\n%s", fragment, log)
	}
}
