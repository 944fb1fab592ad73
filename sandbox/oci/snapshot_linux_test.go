package oci

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// btrfsStateDir returns a state directory on a btrfs filesystem made on a
// loop device over a file the test made, mounted in the test's own mount
// namespace.
func btrfsStateDir(t testing.TB) string {
	t.Helper()
	testenv.RequireIsolated(t)
	mkfs := testenv.RequireBinary(t, "mkfs.btrfs")
	img := filepath.Join(t.TempDir(), "state.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse; room for btrfs' lazy freeing of deleted subvolumes.
	if err := f.Truncate(4 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command(mkfs, "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs: %v: %s", err, out)
	}
	mnt := t.TempDir()
	// mount -o loop attaches a loop device that detaches on unmount.
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount the btrfs state dir: %v", err)
		}
	})
	return filepath.Join(mnt, "state")
}

// TestOCICheckpointRestore checkpoints a sandbox that changed its files in
// every way an overlay records (new files, a removed file, a directory
// of the lower layer replaced), restores it twice, and checks that each
// restored sandbox has the files as they were at the checkpoint and that
// none of them sees another's later writes: with the state directory on
// btrfs (subvolume snapshots) and elsewhere (copies).
func TestOCICheckpointRestore(t *testing.T) {
	for _, fsys := range []string{"copy", "btrfs"} {
		t.Run(fsys, func(t *testing.T) {
			var tweak []func(*Config)
			if fsys == "btrfs" {
				dir := btrfsStateDir(t)
				tweak = append(tweak, func(c *Config) { c.StateDir = dir })
			}
			e := newOCIEnv(t, "runc", tweak...)
			ctx := context.Background()
			lower := e.rootfsDir("root")
			if err := EnsureBusyboxRootfs(lower, testenv.RequireBinary(t, "busybox")); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(lower, "stuff"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(lower, "stuff", "old"), []byte("old\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			e.create(sandbox.Spec{ID: "orig", Rootfs: lower, Labels: map[string]string{"app": "x"}})
			e.sh("orig", `echo one > /data.txt && rm -rf /stuff && mkdir /stuff && echo new > /stuff/only &&
				rm /bin/vi && mkdir /work && head -c 3000000 /dev/urandom > /work/blob && md5sum /work/blob > /work/sum`)

			snap, err := e.m.Checkpoint(ctx, "orig", sandbox.CheckpointRequest{Name: "before"})
			if err != nil {
				t.Fatal(err)
			}
			upper := filepath.Join(snap.Dir, layerDir)
			if fsys == "btrfs" {
				var st unix.Stat_t
				if err := unix.Stat(upper, &st); err != nil || st.Ino != 256 {
					t.Errorf("the snapshot's layer is no btrfs subvolume (inode %d, %v)", st.Ino, err)
				}
			}
			if err := os.WriteFile(filepath.Join(upper, "tamper"), nil, 0o600); err == nil {
				t.Errorf("the snapshot's layer is writable")
			}
			e.sh("orig", "echo two > /data.txt")

			const check = `cat /data.txt; ls /stuff; test -e /bin/vi && echo vi is back; md5sum -c /work/sum`
			const want = "one\nonly\n/work/blob: OK\n"
			info, err := e.m.Restore(ctx, snap.ID, sandbox.RestoreRequest{ID: "copy1"})
			e.track("copy1")
			if err != nil {
				t.Fatal(err)
			}
			if info.State != sandbox.StateReady || info.Labels["app"] != "x" {
				t.Errorf("restored: %+v", info)
			}
			if got := e.sh("copy1", check); got != want {
				t.Errorf("restored files:\n%s\nwant:\n%s", got, want)
			}
			e.sh("copy1", "echo three > /data.txt")
			if _, err := e.m.Restore(ctx, snap.ID, sandbox.RestoreRequest{ID: "copy2"}); err != nil {
				t.Fatal(err)
			}
			e.track("copy2")
			if got := e.sh("copy2", check); got != want {
				t.Errorf("second restore's files:\n%s\nwant:\n%s", got, want)
			}
			if got := e.sh("orig", "cat /data.txt"); got != "two\n" {
				t.Errorf("the original after the restores: %q", got)
			}
			if got := e.sh("copy1", "cat /data.txt"); got != "three\n" {
				t.Errorf("the first restore: %q", got)
			}

			// Snapshots survive a restart and restore after it.
			e.restart(nil)
			if got := e.m.Snapshots(sandbox.SnapshotFilter{SandboxID: "orig"}); len(got) != 1 || got[0].Name != "before" {
				t.Fatalf("after a restart: %+v", got)
			}
			if _, err := e.m.Restore(ctx, snap.ID, sandbox.RestoreRequest{ID: "copy3"}); err != nil {
				t.Fatal(err)
			}
			e.track("copy3")
			if got := e.sh("copy3", check); got != want {
				t.Errorf("restore after a restart:\n%s\nwant:\n%s", got, want)
			}

			if err := e.m.DeleteSnapshot(ctx, snap.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(snap.Dir); !os.IsNotExist(err) {
				t.Errorf("the snapshot's files are still there: %v", err)
			}
			if got := e.sh("copy3", "cat /data.txt"); got != "one\n" {
				t.Errorf("a restored sandbox after its snapshot's deletion: %q", got)
			}
		})
	}
}
