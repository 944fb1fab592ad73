package shares

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	ourFlags = "rw,nosuid,nodev"
	ourOpts  = "rw,nosuid,nodev,relatime"
)

func TestMountAllMountsTheDefaults(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true, "users": false, "private": false})
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults())
	want := []Share{
		{Tag: "arcbox", Path: "/arcbox", Options: ourOpts + ",dax=always", DAX: true, MountedByAgent: true},
		{Tag: "users", Path: "/Users", Options: ourOpts, MountedByAgent: true},
		{Tag: "private", Path: "/private", Options: ourOpts, MountedByAgent: true},
	}
	wantShares(t, got, want)
	k.wantCalls(t,
		"mkdir /arcbox", "mount arcbox /arcbox "+ourFlags+" dax=always",
		"mkdir /Users", "mount users /Users "+ourFlags,
		"mkdir /private", "mount private /private "+ourFlags)
	wantLogged(t, &log, "level=INFO", "VirtioFS share mounted", "tag=arcbox", "dax=true")
}

// wantShares compares shares by their exported fields.
func wantShares(t *testing.T, got, want []Share) {
	t.Helper()
	strip := func(s []Share) []Share {
		out := make([]Share, len(s))
		for i, sh := range s {
			out[i] = Share{Tag: sh.Tag, Path: sh.Path, Options: sh.Options, DAX: sh.DAX, MountedByAgent: sh.MountedByAgent}
		}
		return out
	}
	if g, w := strip(got), strip(want); !reflect.DeepEqual(g, w) {
		t.Errorf("shares:\n  %+v\nwant:\n  %+v", g, w)
	}
}

func TestMountAllOptionsApplyOverTheDefaults(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"data": false})
	var log bytes.Buffer
	got := k.mounter(&log).MountAll([]Spec{{Tag: "data", Path: "/mnt/data", Options: []string{"ro", "suid", "noatime", "noexec"}}})
	wantShares(t, got, []Share{{Tag: "data", Path: "/mnt/data", Options: "ro,nodev,noexec,noatime", MountedByAgent: true}})
	k.wantCalls(t, "mkdir /mnt", "mkdir /mnt/data", "mount data /mnt/data ro,nodev,noexec,noatime")
}

// On a kernel that lists its tags, a tag not listed is not looked for:
// no mount point is made, and the line is a debug one.
func TestMountAllSkipsAnUnlistedTag(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": false})
	var log bytes.Buffer
	got := k.mounter(&log).MountAll([]Spec{{Tag: "users", Path: "/Users"}})
	if len(got) != 0 {
		t.Errorf("shares = %+v, want none", got)
	}
	k.wantCalls(t)
	wantLogged(t, &log, "level=DEBUG", "the VM has no such tag", "tag=users")
	wantNotLogged(t, &log, "level=WARN")
}

// On a kernel without the listing and with no virtio-fs device at all (a
// developer's machine, say), no share is looked for and no directory made.
func TestMountAllWithoutVirtioFSDevicesMakesNoDirectory(t *testing.T) {
	k := newFakeKernel(false, map[string]bool{})
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults())
	if len(got) != 0 {
		t.Errorf("shares = %+v, want none", got)
	}
	k.wantCalls(t)
	for _, tag := range []string{"arcbox", "users", "private"} {
		wantLogged(t, &log, "level=DEBUG", "the VM has no such tag", "tag="+tag)
	}
	wantNotLogged(t, &log, "level=WARN")
}

// On a kernel without the listing but with virtio-fs devices, only the
// mount tells a missing tag, by EINVAL: a debug line, and the mount point
// made for it is removed.
func TestMountAllTellsAMissingTagByEINVALWithoutTheListing(t *testing.T) {
	k := newFakeKernel(false, map[string]bool{"arcbox": false})
	var log bytes.Buffer
	got := k.mounter(&log).MountAll([]Spec{{Tag: "private", Path: "/private/share"}})
	if len(got) != 0 {
		t.Errorf("shares = %+v, want none", got)
	}
	k.wantCalls(t, "mkdir /private", "mkdir /private/share", "mount private /private/share "+ourFlags,
		"rmdir /private/share", "rmdir /private")
	if k.dirs["/private"] || k.dirs["/private/share"] {
		t.Errorf("mount point left behind: %v", k.dirs)
	}
	wantLogged(t, &log, "level=DEBUG", "the VM has no such tag, judging by the mount's EINVAL", "tag=private")
	wantNotLogged(t, &log, "level=WARN")
	wantNotLogged(t, &log, "level=INFO")
}

// Where the kernel lists the tag, EINVAL is a failure like any other.
func TestMountAllWarnsOfEINVALForAListedTag(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"users": false})
	k.failMount = func(string, string, string) error { return unix.EINVAL }
	var log bytes.Buffer
	if got := k.mounter(&log).MountAll([]Spec{{Tag: "users", Path: "/Users"}}); len(got) != 0 {
		t.Errorf("shares = %+v, want none", got)
	}
	wantLogged(t, &log, "level=WARN", "VirtioFS share not mounted", "tag=users", "invalid argument")
	if k.dirs["/Users"] {
		t.Error("mount point left behind")
	}
}

func TestMountAllWarnsWithTheReason(t *testing.T) {
	k := newFakeKernel(false, map[string]bool{"users": false})
	k.failMount = func(string, string, string) error { return unix.ENODEV }
	var log bytes.Buffer
	if got := k.mounter(&log).MountAll([]Spec{{Tag: "users", Path: "/Users"}}); len(got) != 0 {
		t.Errorf("shares = %+v, want none", got)
	}
	wantLogged(t, &log, "level=WARN", "VirtioFS share not mounted", "tag=users",
		"mount virtiofs users on /Users (rw,nosuid,nodev): no such device (the kernel has no virtiofs: load its module")
	k.wantCalls(t, "mkdir /Users", "mount users /Users "+ourFlags, "rmdir /Users")
}

func TestMountAllWarnsWhenTheMountPointCannotBeMade(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"users": false})
	k.readOnly = true
	var log bytes.Buffer
	if got := k.mounter(&log).MountAll([]Spec{{Tag: "users", Path: "/Users"}}); len(got) != 0 {
		t.Errorf("shares = %+v, want none", got)
	}
	wantLogged(t, &log, "level=WARN", "make mount point /Users", "read-only file system")
	k.wantCalls(t, "mkdir /Users")
}

// A mount point's parents made before a failure are removed again.
func TestMountAllRemovesTheParentsItMade(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"users": false})
	k.dirs["/mnt"] = true
	k.failMount = func(string, string, string) error { return unix.EPERM }
	var log bytes.Buffer
	k.mounter(&log).MountAll([]Spec{{Tag: "users", Path: "/mnt/host/users"}})
	k.wantCalls(t, "mkdir /mnt", "mkdir /mnt/host", "mkdir /mnt/host/users", "mount users /mnt/host/users "+ourFlags,
		"rmdir /mnt/host/users", "rmdir /mnt/host")
	if !k.dirs["/mnt"] || k.dirs["/mnt/host"] {
		t.Errorf("dirs = %v, want /mnt kept and /mnt/host removed", k.dirs)
	}
}

// A device without a cache window (QEMU's vhost-user-fs) refuses
// dax=always; the share is mounted without it, and that is said at info.
func TestMountAllFallsBackWithoutDAX(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": false})
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults()[:1])
	wantShares(t, got, []Share{{Tag: "arcbox", Path: "/arcbox", Options: ourOpts, MountedByAgent: true}})
	k.wantCalls(t, "mkdir /arcbox",
		"mount arcbox /arcbox "+ourFlags+" dax=always",
		"mount arcbox /arcbox "+ourFlags+" dax",
		"mount arcbox /arcbox "+ourFlags)
	wantLogged(t, &log, "level=INFO", "mounted without DAX: the kernel refused it", "tag=arcbox",
		"mount virtiofs arcbox on /arcbox (rw,nosuid,nodev,dax=always): invalid argument")
	wantNotLogged(t, &log, "level=WARN")
}

// Linux 5.10 to 5.16 know DAX only as "dax".
func TestMountAllUsesTheOldDAXSpelling(t *testing.T) {
	k := newFakeKernel(false, map[string]bool{"arcbox": true})
	k.legacyDAX = true
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults()[:1])
	wantShares(t, got, []Share{{Tag: "arcbox", Path: "/arcbox", Options: ourOpts + ",dax", DAX: true, MountedByAgent: true}})
	k.wantCalls(t, "mkdir /arcbox", "mount arcbox /arcbox "+ourFlags+" dax=always", "mount arcbox /arcbox "+ourFlags+" dax")
	wantNotLogged(t, &log, "without DAX")
}

// A mount failing for another reason than DAX is not retried without it.
func TestMountAllDoesNotRetryAnotherFailure(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true})
	k.failMount = func(string, string, string) error { return unix.EPERM }
	var log bytes.Buffer
	if got := k.mounter(&log).MountAll(Defaults()[:1]); len(got) != 0 {
		t.Errorf("shares = %+v, want none", got)
	}
	k.wantCalls(t, "mkdir /arcbox", "mount arcbox /arcbox "+ourFlags+" dax=always", "rmdir /arcbox")
	wantLogged(t, &log, "level=WARN", "operation not permitted")
}

func TestMountAllKeepsAShareMountedAsAsked(t *testing.T) {
	for _, tc := range []struct {
		name, bootData string
		spec           Spec
		wantOpts       string
		wantDAX        bool
	}{
		{"with DAX", "dax=always", Defaults()[0], "rw,relatime,dax=always", true},
		{"no DAX asked", "", Spec{Tag: "users", Path: "/Users"}, "rw,relatime", false},
		{"DAX not asked, but there", "dax=always", Spec{Tag: "arcbox", Path: "/arcbox"}, "rw,relatime,dax=always", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeKernel(true, map[string]bool{tc.spec.Tag: true})
			k.premount(t, tc.spec.Tag, tc.spec.Path, tc.bootData)
			var log bytes.Buffer
			m := k.mounter(&log)
			got := m.MountAll([]Spec{tc.spec})
			wantShares(t, got, []Share{{Tag: tc.spec.Tag, Path: tc.spec.Path, Options: tc.wantOpts, DAX: tc.wantDAX}})
			k.wantCalls(t)
			wantLogged(t, &log, "level=INFO", "VirtioFS share already mounted")
			// Unmount leaves the boot's mount alone.
			if err := m.Unmount(got); err != nil {
				t.Fatal(err)
			}
			k.wantCalls(t)
		})
	}
}

// A share the boot mounted without DAX is unmounted and mounted again
// with it: a second mount over it would share the boot's options.
func TestMountAllRemountsTheBootsShareForDAX(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true})
	k.premount(t, "arcbox", "/arcbox", "")
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults()[:1])
	wantShares(t, got, []Share{{Tag: "arcbox", Path: "/arcbox", Options: ourOpts + ",dax=always", DAX: true, MountedByAgent: true}})
	k.wantCalls(t, "umount /arcbox", "mount arcbox /arcbox "+ourFlags+" dax=always")
	if n := len(k.mounts); n != 1 {
		t.Errorf("%d mounts, want 1: %+v", n, k.mounts)
	}
	wantLogged(t, &log, "level=INFO", "mounted again, replacing the mount it had", "dax=true")
}

// Without a cache window, the remount for DAX ends as the boot's was, but
// the agent's now.
func TestMountAllRemountsTheBootsShareWithoutDAXWhenRefused(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": false})
	k.premount(t, "arcbox", "/arcbox", "")
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults()[:1])
	wantShares(t, got, []Share{{Tag: "arcbox", Path: "/arcbox", Options: ourOpts, MountedByAgent: true}})
	k.wantCalls(t, "umount /arcbox",
		"mount arcbox /arcbox "+ourFlags+" dax=always", "mount arcbox /arcbox "+ourFlags+" dax", "mount arcbox /arcbox "+ourFlags)
	wantLogged(t, &log, "level=INFO", "mounted without DAX: the kernel refused it")
}

// A boot's mount in use (the agent's own binary may be on it) stays.
func TestMountAllKeepsABusyBootShare(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true})
	k.premount(t, "arcbox", "/arcbox", "")
	k.busy["/arcbox"] = true
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults()[:1])
	wantShares(t, got, []Share{{Tag: "arcbox", Path: "/arcbox", Options: "rw,relatime"}})
	k.wantCalls(t, "umount /arcbox")
	wantLogged(t, &log, "level=INFO", "left as it was mounted", "cannot be unmounted", "device or resource busy")
}

// A tag mounted at a second place too keeps its superblock whatever the
// agent unmounts at the share's path: nothing is tried.
func TestMountAllKeepsABootShareMountedTwice(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true})
	k.premount(t, "arcbox", "/arcbox", "")
	k.premount(t, "arcbox", "/mnt/arcbox", "")
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults()[:1])
	wantShares(t, got, []Share{{Tag: "arcbox", Path: "/arcbox", Options: "rw,relatime"}})
	k.wantCalls(t)
	wantLogged(t, &log, "level=INFO", "the tag is mounted elsewhere too", "also_at=[/mnt/arcbox]")
}

// Should mounting again fail once the boot's mount is gone, the share is
// lost, and that is a warning.
func TestMountAllWarnsOfAShareLostInTheRemount(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true})
	k.premount(t, "arcbox", "/arcbox", "")
	k.failMount = func(string, string, string) error { return unix.ENOMEM }
	var log bytes.Buffer
	if got := k.mounter(&log).MountAll(Defaults()[:1]); len(got) != 0 {
		t.Errorf("shares = %+v, want none", got)
	}
	wantLogged(t, &log, "level=WARN", "VirtioFS share lost", "cannot allocate memory")
}

// A tag mounted elsewhere only (not on the share's path) is mounted on the
// path too, but shares the other mount's options, DAX or not.
func TestMountAllSaysWhyATagMountedElsewhereHasNoDAX(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true})
	k.premount(t, "arcbox", "/mnt/arcbox", "")
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults()[:1])
	wantShares(t, got, []Share{{Tag: "arcbox", Path: "/arcbox", Options: ourOpts, MountedByAgent: true}})
	k.wantCalls(t, "mkdir /arcbox", "mount arcbox /arcbox "+ourFlags+" dax=always")
	wantLogged(t, &log, "level=INFO", "without the DAX mode asked for", "also_at=[/mnt/arcbox]")
}

func TestMountAllLeavesAForeignMountAlone(t *testing.T) {
	for _, tc := range []struct {
		name, root, fstype, source string
	}{
		{"tmpfs", "/", "tmpfs", "tmpfs"},
		{"another tag", "/", "virtiofs", "other"},
		{"a directory of the share", "/sub", "virtiofs", "users"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeKernel(true, map[string]bool{"users": true, "other": true})
			k.premountForeign("/Users", tc.root, tc.fstype, tc.source)
			var log bytes.Buffer
			m := k.mounter(&log)
			if got := m.MountAll([]Spec{{Tag: "users", Path: "/Users"}}); len(got) != 0 {
				t.Errorf("shares = %+v, want none", got)
			}
			k.wantCalls(t)
			wantLogged(t, &log, "level=WARN", "already a mount of something else", "fstype="+tc.fstype)
		})
	}
}

// A missing tag is a debug line even where something else is mounted on
// its path: there is nothing to mount.
func TestMountAllMissingTagOverAForeignMountIsDebug(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{})
	k.premountForeign("/private", "/", "ext4", "/dev/vda1")
	var log bytes.Buffer
	k.mounter(&log).MountAll([]Spec{{Tag: "private", Path: "/private"}})
	wantLogged(t, &log, "level=DEBUG", "the VM has no such tag")
	wantNotLogged(t, &log, "level=WARN")
}

// Without the tags, each share is mounted to find out.
func TestMountAllWithoutTagsTriesEachShare(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"users": false})
	k.tagsErr = errors.New("permission denied")
	var log bytes.Buffer
	got := k.mounter(&log).MountAll([]Spec{{Tag: "users", Path: "/Users"}, {Tag: "private", Path: "/private"}})
	wantShares(t, got, []Share{{Tag: "users", Path: "/Users", Options: ourOpts, MountedByAgent: true}})
	wantLogged(t, &log, "level=WARN", "cannot tell which VirtioFS tags", "permission denied")
	wantLogged(t, &log, "level=DEBUG", "judging by the mount's EINVAL", "tag=private")
}

// Without a mount table, shares are mounted all the same and described
// by what was asked.
func TestMountAllWithoutMountInfo(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true})
	k.mountInfoErr = errors.New("no /proc")
	var log bytes.Buffer
	got := k.mounter(&log).MountAll(Defaults()[:1])
	wantShares(t, got, []Share{{Tag: "arcbox", Path: "/arcbox", Options: ourFlags + ",dax=always", DAX: true, MountedByAgent: true}})
	wantLogged(t, &log, "level=WARN", "cannot read the mount table", "no /proc")
}

func TestMountAllNestedShares(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"a": false, "b": false})
	var log bytes.Buffer
	got := k.mounter(&log).MountAll([]Spec{{Tag: "a", Path: "/a"}, {Tag: "b", Path: "/a/b"}})
	if len(got) != 2 {
		t.Fatalf("shares = %+v, want 2", got)
	}
	k.wantCalls(t, "mkdir /a", "mount a /a "+ourFlags, "mkdir /a", "mkdir /a/b", "mount b /a/b "+ourFlags)
}

func TestUnmountUndoesOnlyTheAgentsMountsInReverse(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": true, "users": false, "private": false})
	k.premount(t, "users", "/Users", "")
	var log bytes.Buffer
	m := k.mounter(&log)
	shares := m.MountAll(Defaults())
	if len(shares) != 3 {
		t.Fatalf("shares = %+v, want 3", shares)
	}
	k.calls = nil
	if err := m.Unmount(shares); err != nil {
		t.Fatal(err)
	}
	k.wantCalls(t, "umount /private", "rmdir /private", "umount /arcbox", "rmdir /arcbox")
	if _, ok := k.mountedAt("/Users"); !ok {
		t.Error("the boot's /Users was unmounted")
	}
	wantLogged(t, &log, "level=INFO", "VirtioFS share unmounted", "tag=private")
}

func TestUnmountJoinsErrorsNamingThePaths(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"arcbox": false, "users": false, "private": false})
	k.dirs["/arcbox"] = true // the image has it: not removed after
	var log bytes.Buffer
	m := k.mounter(&log)
	shares := m.MountAll(Defaults())
	k.busy["/Users"] = true
	k.busy["/private"] = true
	k.calls = nil
	err := m.Unmount(shares)
	if err == nil {
		t.Fatal("Unmount succeeded with two shares busy")
	}
	for _, want := range []string{"unmount share private at /private: device or resource busy", "unmount share users at /Users: device or resource busy"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if !errors.Is(err, unix.EBUSY) {
		t.Errorf("error %v is not EBUSY", err)
	}
	k.wantCalls(t, "umount /private", "umount /Users", "umount /arcbox")
	if !k.dirs["/arcbox"] {
		t.Error("a mount point the agent did not make was removed")
	}
}

// A share covered by a later mount is not unmounted: that would unmount
// the later one. One unmounted already is skipped.
func TestUnmountChecksTheMountIsStillTheShares(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"users": false, "private": false})
	var log bytes.Buffer
	m := k.mounter(&log)
	shares := m.MountAll([]Spec{{Tag: "users", Path: "/Users"}, {Tag: "private", Path: "/private"}})
	k.premountForeign("/Users", "/", "tmpfs", "tmpfs")
	if err := k.unmount("/private"); err != nil {
		t.Fatal(err)
	}
	k.calls = nil
	err := m.Unmount(shares)
	if err == nil || !strings.Contains(err.Error(), "unmount share users at /Users: another mount covers it") {
		t.Errorf("err = %v, want the covered /Users named", err)
	}
	k.wantCalls(t, "rmdir /private")
	if mi, _ := k.mountedAt("/Users"); mi.FSType != "tmpfs" {
		t.Errorf("/Users has %s on top, want the tmpfs left", mi.FSType)
	}
}

func TestUnmountWithoutMountInfoUnmountsAnyway(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"users": false})
	var log bytes.Buffer
	m := k.mounter(&log)
	shares := m.MountAll([]Spec{{Tag: "users", Path: "/Users"}})
	k.mountInfoErr = errors.New("no /proc")
	k.calls = nil
	if err := m.Unmount(shares); err != nil {
		t.Fatal(err)
	}
	k.wantCalls(t, "umount /Users", "rmdir /Users")
}

func TestNilLoggerDiscards(t *testing.T) {
	k := newFakeKernel(true, map[string]bool{"users": false})
	m := k.mounter(&bytes.Buffer{})
	m.Logger = nil
	if got := m.MountAll([]Spec{{Tag: "users", Path: "/Users"}, {Tag: "x", Path: "/x"}}); len(got) != 1 {
		t.Errorf("shares = %+v, want 1", got)
	}
}
