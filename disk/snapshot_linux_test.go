package disk

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestBtrfsIoctlNumbers(t *testing.T) {
	if unix.FS_IOC_SETFLAGS != 0x40086602 {
		t.Skip("numbers below are for 64-bit architectures with generic ioctl encoding")
	}
	for name, c := range map[string]struct{ got, want uint }{
		"BTRFS_IOC_SUBVOL_CREATE":  {btrfsIocSubvolCreate, 0x5000940e},
		"BTRFS_IOC_SNAP_DESTROY":   {btrfsIocSnapDestroy, 0x5000940f},
		"BTRFS_IOC_SNAP_CREATE_V2": {btrfsIocSnapCreateV2, 0x50009417},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %#x, want %#x", name, c.got, c.want)
		}
	}
}

// newBtrfsDir returns the root of a fresh btrfs on a loop device.
func newBtrfsDir(t testing.TB) string {
	t.Helper()
	loop := newLoop(t, newImage(t, imageSize))
	run(t, "mkfs.btrfs", "-q", loop)
	return mountFS(t, "btrfs", loop)
}

// newExt4Dir returns the root of a fresh ext4 on a loop device.
func newExt4Dir(t testing.TB) string {
	t.Helper()
	loop := newLoop(t, newImage(t, 1<<30))
	run(t, "mkfs.ext4", "-q", "-F", "-N", "200000", loop)
	return mountFS(t, "ext4", loop)
}

// TestSnapshotters runs the same checks on each backend: btrfs, and the
// copy fallback on tmpfs and ext4.
func TestSnapshotters(t *testing.T) {
	requireMountTests(t)
	for _, b := range []struct {
		name, want string
		dir        func(testing.TB) string
	}{
		{"btrfs", "btrfs", newBtrfsDir},
		{"tmpfs", "copy", func(t testing.TB) string { return mountFS(t, "tmpfs", "") }},
		{"ext4", "copy", newExt4Dir},
	} {
		t.Run(b.name, func(t *testing.T) {
			dir := b.dir(t)
			s, err := NewSnapshotter(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.(interface{ String() string }).String(); got != b.want {
				t.Fatalf("NewSnapshotter on %s: got %s, want %s", b.name, got, b.want)
			}
			testSnapshotter(t, s, dir)
		})
	}
}

var epoch = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)

// fillTree writes a small tree with the kinds of files a copy must keep.
func fillTree(t testing.TB, root string, chown bool) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(root, "sub"), 0o750))
	writeFile(t, filepath.Join(root, "a.txt"), "one")
	writeFile(t, filepath.Join(root, "sub", "b.txt"), "two")
	must(os.Chmod(filepath.Join(root, "a.txt"), 0o640|os.ModeSetgid))
	must(os.Symlink("a.txt", filepath.Join(root, "link")))
	must(os.Symlink("/nowhere", filepath.Join(root, "dangling")))
	must(os.Link(filepath.Join(root, "a.txt"), filepath.Join(root, "hard")))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o600))
	must(os.Chtimes(filepath.Join(root, "sub", "b.txt"), epoch, epoch))
	must(os.Chtimes(filepath.Join(root, "sub"), epoch, epoch))
	if chown {
		must(os.Lchown(filepath.Join(root, "sub", "b.txt"), 1234, 5678))
		must(os.Lchown(filepath.Join(root, "link"), 4321, 8765))
		// What an overlayfs upper layer holds: an opaque directory and a
		// whiteout (a 0/0 character device).
		must(unix.Lsetxattr(filepath.Join(root, "sub"), "trusted.overlay.opaque", []byte("y"), 0))
		must(unix.Mknod(filepath.Join(root, "whiteout"), unix.S_IFCHR, 0))
	}
}

// checkTree checks what fillTree made survived in a copy.
func checkTree(t testing.TB, root string, chown bool) {
	t.Helper()
	checkFile(t, filepath.Join(root, "a.txt"), "one")
	checkFile(t, filepath.Join(root, "sub", "b.txt"), "two")
	lstat := func(name string) *unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, name), &st); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	if m := lstat("a.txt").Mode & 0o7777; m != 0o2640 {
		t.Errorf("a.txt mode: got %o, want 2640", m)
	}
	if m := lstat("sub").Mode & 0o7777; m != 0o750 {
		t.Errorf("sub mode: got %o, want 750", m)
	}
	if chown {
		buf := make([]byte, 16)
		n, err := unix.Lgetxattr(filepath.Join(root, "sub"), "trusted.overlay.opaque", buf)
		if err != nil || string(buf[:n]) != "y" {
			t.Errorf("sub: trusted.overlay.opaque: got %q, %v; want \"y\"", buf[:n], err)
		}
		if st := lstat("whiteout"); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
			t.Errorf("whiteout: mode %o rdev %d, want a 0/0 character device", st.Mode, st.Rdev)
		}
	}
	if a, h := lstat("a.txt"), lstat("hard"); a.Ino != h.Ino {
		t.Errorf("hard is not a hard link of a.txt (inodes %d, %d)", a.Ino, h.Ino)
	}
	if l, _ := os.Readlink(filepath.Join(root, "link")); l != "a.txt" {
		t.Errorf("link: got %q, want a.txt", l)
	}
	if l, _ := os.Readlink(filepath.Join(root, "dangling")); l != "/nowhere" {
		t.Errorf("dangling: got %q, want /nowhere", l)
	}
	if st := lstat("fifo"); st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo: mode %o, want a FIFO", st.Mode)
	}
	for _, name := range []string{"sub", "sub/b.txt"} {
		if mt := time.Unix(lstat(name).Mtim.Unix()); !mt.Equal(epoch) {
			t.Errorf("%s mtime: got %v, want %v", name, mt, epoch)
		}
	}
	if chown {
		if st := lstat("sub/b.txt"); st.Uid != 1234 || st.Gid != 5678 {
			t.Errorf("sub/b.txt owner: got %d:%d, want 1234:5678", st.Uid, st.Gid)
		}
		if st := lstat("link"); st.Uid != 4321 || st.Gid != 8765 {
			t.Errorf("link owner: got %d:%d, want 4321:8765", st.Uid, st.Gid)
		}
	}
}

func testSnapshotter(t *testing.T, s Snapshotter, dir string) {
	path := func(name string) string { return filepath.Join(dir, name) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Create(path("base")))
	fillTree(t, path("base"), true)

	// A writable snapshot is an independent copy, both ways.
	must(s.Snapshot(path("base"), path("rw"), false))
	checkTree(t, path("rw"), true)
	writeFile(t, path("rw/a.txt"), "changed in snapshot")
	writeFile(t, path("rw/new"), "only in snapshot")
	writeFile(t, path("base/sub/b.txt"), "changed in base")
	checkFile(t, path("base/a.txt"), "one")
	checkFile(t, path("rw/sub/b.txt"), "two")
	if _, err := os.Stat(path("base/new")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("base/new: %v, want it absent", err)
	}

	// A read-only snapshot refuses writes, root's included.
	must(s.Snapshot(path("base"), path("ro"), true))
	checkFile(t, path("ro/a.txt"), "one")
	if err := os.WriteFile(path("ro/a.txt"), []byte("x"), 0o644); err == nil {
		t.Error("overwrote a file in a read-only snapshot")
	}
	if err := os.WriteFile(path("ro/new"), []byte("x"), 0o644); err == nil {
		t.Error("created a file in a read-only snapshot")
	}
	if err := os.Remove(path("ro/sub/b.txt")); err == nil {
		t.Error("removed a file from a read-only snapshot")
	}
	checkFile(t, path("ro/a.txt"), "one")
	writeFile(t, path("base/a.txt"), "base still writable")

	// A writable snapshot of a read-only one is writable.
	must(s.Snapshot(path("ro"), path("rw2"), false))
	writeFile(t, path("rw2/a.txt"), "writable again")
	checkFile(t, path("ro/a.txt"), "one")

	if err := s.Snapshot(path("base"), path("rw"), false); err == nil {
		t.Error("snapshot onto an existing path succeeded")
	}
	for _, name := range []string{"ro", "rw", "rw2", "base"} {
		must(s.Delete(path(name)))
		if _, err := os.Lstat(path(name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after Delete: %v, want it gone", name, err)
		}
	}
	must(s.Delete(path("never-existed")))
	if entries, _ := os.ReadDir(dir); len(entries) > 1 { // lost+found on ext4
		t.Errorf("left behind in %s: %v", dir, entries)
	}
}

// TestBtrfsSnapshotterNested: deleting a subvolume holding nested
// subvolumes deletes them all; a plain directory cannot be snapshotted.
func TestBtrfsSnapshotterNested(t *testing.T) {
	requireMountTests(t)
	dir := newBtrfsDir(t)
	s, err := NewSnapshotter(dir)
	if err != nil {
		t.Fatal(err)
	}
	outer := filepath.Join(dir, "outer")
	for _, p := range []string{outer, outer + "/inner", outer + "/inner/deeper"} {
		if err := s.Create(p); err != nil {
			t.Fatal(err)
		}
		writeFile(t, p+"/file", "x")
	}
	if err := os.Mkdir(outer+"/plain", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(outer + "/plain/in-plain-dir"); err != nil {
		t.Fatal(err)
	}
	if err := s.Snapshot(outer+"/plain", dir+"/snap", false); err == nil || !strings.Contains(err.Error(), "not a btrfs subvolume") {
		t.Errorf("snapshot of a plain directory: got %v, want a refusal", err)
	}
	if err := destroySubvolume(outer); !errors.Is(err, unix.ENOTEMPTY) {
		t.Fatalf("kernel deleting a subvolume with nested ones: got %v, want ENOTEMPTY", err)
	}
	if err := s.Delete(outer); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := os.Lstat(outer); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("outer after Delete: %v, want it gone", err)
	}
}

// TestCopySnapshotterUnprivileged runs the copy fallback as any user in a
// temporary directory.
func TestCopySnapshotterUnprivileged(t *testing.T) {
	dir := t.TempDir()
	s := copySnapshotter{}
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	if err := s.Create(src); err != nil {
		t.Fatal(err)
	}
	fillTree(t, src, false)
	if err := s.Snapshot(src, dst, false); err != nil {
		t.Fatal(err)
	}
	checkTree(t, dst, false)
	writeFile(t, filepath.Join(dst, "a.txt"), "changed")
	checkFile(t, filepath.Join(src, "a.txt"), "one")
	checkFile(t, filepath.Join(dst, "hard"), "changed") // still one inode within the copy

	if err := s.Snapshot(src, dst, false); !errors.Is(err, fs.ErrExist) {
		t.Errorf("snapshot onto an existing path: got %v, want fs.ErrExist", err)
	}
	if err := s.Snapshot(filepath.Join(src, "a.txt"), filepath.Join(dir, "file-snap"), false); err == nil {
		t.Error("snapshot of a file succeeded")
	}
	if os.Geteuid() != 0 {
		// Without CAP_LINUX_IMMUTABLE a read-only copy fails whole.
		err := s.Snapshot(src, filepath.Join(dir, "ro"), true)
		if err == nil {
			t.Error("read-only snapshot without the privilege succeeded")
		}
	}
	if err := s.Delete(dst); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(src); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}
