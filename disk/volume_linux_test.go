package disk

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

const imageSize = 256 << 20

// TestEnsureBlankDevice: a blank device is formatted, mounted and given its
// subvolumes; a second Ensure changes nothing; after a "reboot" (everything
// unmounted) Ensure mounts it again with the files written before.
func TestEnsureBlankDevice(t *testing.T) {
	requireMountTests(t)
	ctx := context.Background()
	loop := newLoop(t, newImage(t, imageSize))
	cfg := testConfig(t, loop)
	v := newVolume(t, cfg)

	note, err := v.Ensure(ctx)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	for _, want := range []string{"formatted " + loop + " as btrfs", "created subvolume @docker",
		"created subvolume @containerd", "mounted @docker at " + cfg.Subvolumes[0].Target} {
		if !strings.Contains(note, want) {
			t.Errorf("note %q lacks %q", note, want)
		}
	}
	checkMountedVolume(t, cfg, loop)
	if _, err := os.Stat(filepath.Join(cfg.StateDir, journalName)); !os.IsNotExist(err) {
		t.Errorf("format journal left behind after a complete format: %v", err)
	}
	st := v.Status()
	if !st.Mounted || st.Filesystem != "btrfs" || st.FreeBytes == 0 || st.Device != loop {
		t.Errorf("Status: got %+v, want mounted btrfs with free space", st)
	}
	if s := v.ServiceStatus(); s.Status != ServiceReady {
		t.Errorf("ServiceStatus: got %+v, want ready", s)
	}

	before := mountsAt(t, volumePaths(cfg)...)
	note, err = v.Ensure(ctx)
	if err != nil || note != "data volume already mounted" {
		t.Errorf("second Ensure: got %q, %v; want %q", note, err, "data volume already mounted")
	}
	if after := mountsAt(t, volumePaths(cfg)...); !reflect.DeepEqual(after, before) {
		t.Errorf("second Ensure changed the mounts:\n got %+v\nwant %+v", after, before)
	}

	writeFile(t, filepath.Join(cfg.Subvolumes[0].Target, "image-layer"), "docker data")
	writeFile(t, filepath.Join(cfg.Subvolumes[1].Target, "snapshot"), "containerd data")

	unmountAll(t, cfg) // a reboot
	if got := mountsAt(t, volumePaths(cfg)...); len(got) != 0 {
		t.Fatalf("still mounted after unmounting: %+v", got)
	}
	if st := v.Status(); st.Mounted || v.ServiceStatus().Status != ServiceNotReady {
		t.Errorf("after unmount: got %+v, want not mounted, not_ready", st)
	}
	note, err = newVolume(t, cfg).Ensure(ctx)
	if err != nil {
		t.Fatalf("Ensure after reboot: %v", err)
	}
	if strings.Contains(note, "formatted") || !strings.Contains(note, "mounted "+loop) {
		t.Errorf("Ensure after reboot: note %q, want a mount without a format", note)
	}
	checkMountedVolume(t, cfg, loop)
	checkFile(t, filepath.Join(cfg.Subvolumes[0].Target, "image-layer"), "docker data")
	checkFile(t, filepath.Join(cfg.Subvolumes[1].Target, "snapshot"), "containerd data")
}

// TestEnsureConcurrent: callers racing on a blank device get one format
// and one set of mounts.
func TestEnsureConcurrent(t *testing.T) {
	requireMountTests(t)
	loop := newLoop(t, newImage(t, imageSize))
	cfg := testConfig(t, loop)
	v := newVolume(t, cfg)

	notes := make([]string, 4)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range notes {
		wg.Go(func() { notes[i], errs[i] = v.Ensure(context.Background()) })
	}
	wg.Wait()
	formatted := 0
	for i := range notes {
		if errs[i] != nil {
			t.Errorf("Ensure %d: %v", i, errs[i])
		}
		if strings.Contains(notes[i], "formatted") {
			formatted++
		}
	}
	if formatted != 1 {
		t.Errorf("formatted %d times, want once: %q", formatted, notes)
	}
	checkMountedVolume(t, cfg, loop)
}

// TestEnsureRefusesExt4: a device carrying ext4 is refused, with an error
// naming ext4 and the override, and its files are intact; with Wipe it is
// formatted.
func TestEnsureRefusesExt4(t *testing.T) {
	requireMountTests(t)
	ctx := context.Background()
	loop := newLoop(t, newImage(t, imageSize))
	run(t, "mkfs.ext4", "-q", "-F", loop)
	dir := mountFS(t, "ext4", loop)
	writeFile(t, filepath.Join(dir, "precious"), "customer data")
	unmount(t, dir)

	cfg := testConfig(t, loop)
	v := newVolume(t, cfg)
	_, err := v.Ensure(ctx)
	if !errors.Is(err, ErrForeignFilesystem) {
		t.Fatalf("Ensure on ext4: got %v, want ErrForeignFilesystem", err)
	}
	for _, want := range []string{loop, "ext4", "--wipe-data-device", "ARCBOX_WIPE_DATA_DEVICE=true"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if got := mountsAt(t, volumePaths(cfg)...); len(got) != 0 {
		t.Errorf("refused, yet mounted: %+v", got)
	}
	if st, s := v.Status(), v.ServiceStatus(); st.Filesystem != "ext4" || s.Status != ServiceError || !strings.Contains(s.Detail, "--wipe-data-device") {
		t.Errorf("status after refusal: %+v, %+v; want ext4, error naming the override", st, s)
	}
	if sig := detectFile(t, loop); sig.Kind != KindExt4 {
		t.Errorf("device now carries %v, want ext4 untouched", sig)
	}
	mountFS(t, "ext4", loop)
	dir = mountsAtSource(t, loop)
	checkFile(t, filepath.Join(dir, "precious"), "customer data")
	unmount(t, dir)

	cfg.Wipe = true
	note, err := newVolume(t, cfg).Ensure(ctx)
	if err != nil {
		t.Fatalf("Ensure with Wipe: %v", err)
	}
	if !strings.Contains(note, "wiped "+loop) || !strings.Contains(note, "ext4") {
		t.Errorf("note %q: want it to say ext4 was wiped", note)
	}
	checkMountedVolume(t, cfg, loop)
}

// mountsAtSource returns where source is mounted.
func mountsAtSource(t testing.TB, source string) string {
	t.Helper()
	all, err := readMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all {
		if m.Source == source {
			return m.MountPoint
		}
	}
	t.Fatalf("%s is not mounted", source)
	return ""
}

// TestEnsureImageFile: a regular file as Device is attached to an autoclear
// loop device, reused while mounted, and released when unmounted.
func TestEnsureImageFile(t *testing.T) {
	requireMountTests(t)
	ctx := context.Background()
	img := newImage(t, imageSize)
	t.Cleanup(func() { waitNoLoop(t, img) }) // runs after the unmounts below
	cfg := testConfig(t, img)

	note, err := newVolume(t, cfg).Ensure(ctx)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	loops := loopsBacking(t, img)
	if len(loops) != 1 {
		t.Fatalf("loop devices backing %s: %v, want one", img, loops)
	}
	if !strings.Contains(note, "attached "+img+" to "+loops[0]) {
		t.Errorf("note %q does not tell about the loop device", note)
	}
	checkMountedVolume(t, cfg, loops[0])
	writeFile(t, filepath.Join(cfg.Subvolumes[0].Target, "kept"), "across reattach")

	note, err = newVolume(t, cfg).Ensure(ctx) // an agent restart
	if err != nil || note != "data volume already mounted" {
		t.Errorf("Ensure again: got %q, %v; want already mounted", note, err)
	}
	if again := loopsBacking(t, img); !reflect.DeepEqual(again, loops) {
		t.Errorf("loop devices after a second Ensure: %v, want %v reused", again, loops)
	}

	unmountAll(t, cfg)
	waitNoLoop(t, img) // autoclear: unmounting released the device

	if _, err := newVolume(t, cfg).Ensure(ctx); err != nil {
		t.Fatalf("Ensure after reboot: %v", err)
	}
	loops = loopsBacking(t, img)
	if len(loops) != 1 {
		t.Fatalf("loop devices backing %s: %v, want one", img, loops)
	}
	checkMountedVolume(t, cfg, loops[0])
	checkFile(t, filepath.Join(cfg.Subvolumes[0].Target, "kept"), "across reattach")
}

// TestEnsureReusesLoopDevice: a loop device made by losetup over the image
// is used rather than a second one.
func TestEnsureReusesLoopDevice(t *testing.T) {
	requireMountTests(t)
	img := newImage(t, imageSize)
	out, err := execOutput(t, "losetup", "--find", "--show", img)
	if err != nil {
		t.Fatal(err)
	}
	loop := strings.TrimSpace(out)
	t.Cleanup(func() { run(t, "losetup", "-d", loop) })
	cfg := testConfig(t, img)

	note, err := newVolume(t, cfg).Ensure(context.Background())
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if strings.Contains(note, "attached") {
		t.Errorf("note %q: attached a new loop device instead of reusing %s", note, loop)
	}
	if got := loopsBacking(t, img); !reflect.DeepEqual(got, []string{loop}) {
		t.Errorf("loop devices backing the image: %v, want only %s", got, loop)
	}
	checkMountedVolume(t, cfg, loop)
}

// TestEnsureMountConflict: another filesystem on a target stops Ensure
// before it formats anything.
func TestEnsureMountConflict(t *testing.T) {
	requireMountTests(t)
	loop := newLoop(t, newImage(t, imageSize))
	cfg := testConfig(t, loop)
	if err := os.MkdirAll(cfg.Subvolumes[1].Target, 0o755); err != nil {
		t.Fatal(err)
	}
	mountTmpfsAt(t, cfg.Subvolumes[1].Target)

	_, err := newVolume(t, cfg).Ensure(context.Background())
	if !errors.Is(err, ErrMountConflict) || !strings.Contains(err.Error(), cfg.Subvolumes[1].Target) {
		t.Fatalf("got %v, want ErrMountConflict naming %s", err, cfg.Subvolumes[1].Target)
	}
	if sig := detectFile(t, loop); sig.Kind != KindBlank {
		t.Errorf("device carries %v after a refused Ensure, want it still blank", sig)
	}
}

// TestEnsureInterruptedFormat simulates mkfs.btrfs killed half way: it
// leaves its temporary magic. Without the intent journal (lost on reboot)
// the next start refuses and names the override; with it, it formats again.
func TestEnsureInterruptedFormat(t *testing.T) {
	requireMountTests(t)
	ctx := context.Background()
	loop := newLoop(t, newImage(t, imageSize))
	cfg := testConfig(t, loop)
	crashing := cfg
	crashing.MkfsPath = fakeMkfs(t, `printf '!BHRfS_M' | dd of="$dev" bs=1 seek=65600 conv=notrunc status=none
kill -9 $$`)

	v := newVolume(t, crashing)
	_, err := v.Ensure(ctx)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Ensure with a crashing mkfs: got %v, want the mkfs failure", err)
	}
	if s := v.ServiceStatus(); s.Status != ServiceError {
		t.Errorf("ServiceStatus after the crash: %+v, want error", s)
	}
	if sig := detectFile(t, loop); sig.Kind != KindBtrfsIncomplete {
		t.Fatalf("device carries %v, want an incomplete btrfs", sig)
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, journalName)); err != nil {
		t.Fatalf("format journal: %v", err)
	}

	rebooted := cfg
	rebooted.StateDir = filepath.Join(t.TempDir(), "empty-state")
	_, err = newVolume(t, rebooted).Ensure(ctx)
	if !errors.Is(err, ErrForeignFilesystem) || !strings.Contains(err.Error(), "incomplete btrfs") ||
		!strings.Contains(err.Error(), "--wipe-data-device") {
		t.Fatalf("Ensure without the journal: got %v, want a refusal naming the incomplete btrfs and the override", err)
	}

	note, err := newVolume(t, cfg).Ensure(ctx)
	if err != nil {
		t.Fatalf("Ensure with the journal: %v", err)
	}
	if !strings.Contains(note, "redid an interrupted format") {
		t.Errorf("note %q: want it to say the format was redone", note)
	}
	checkMountedVolume(t, cfg, loop)
	if _, err := os.Stat(filepath.Join(cfg.StateDir, journalName)); !os.IsNotExist(err) {
		t.Errorf("format journal left after the repair: %v", err)
	}
}

// TestEnsureFormatDoesNotMount simulates a format that "succeeds" but
// leaves a btrfs that does not mount. With the journal the next start
// formats again; without it the device is reported damaged, and Wipe does
// not reformat it.
func TestEnsureFormatDoesNotMount(t *testing.T) {
	requireMountTests(t)
	ctx := context.Background()
	loop := newLoop(t, newImage(t, imageSize))
	cfg := testConfig(t, loop)
	broken := cfg
	broken.MkfsPath = fakeMkfs(t, `printf '_BHRfS_M' | dd of="$dev" bs=1 seek=65600 conv=notrunc status=none`)

	_, err := newVolume(t, broken).Ensure(ctx)
	if !errors.Is(err, ErrDamagedFilesystem) || !strings.Contains(err.Error(), "freshly formatted") {
		t.Fatalf("Ensure with a broken mkfs: got %v, want ErrDamagedFilesystem after the format", err)
	}

	wiping := cfg
	wiping.Wipe = true
	wiping.StateDir = filepath.Join(t.TempDir(), "empty-state")
	_, err = newVolume(t, wiping).Ensure(ctx)
	if !errors.Is(err, ErrDamagedFilesystem) || !strings.Contains(err.Error(), "never reformatted") {
		t.Fatalf("Ensure without the journal, with Wipe: got %v, want ErrDamagedFilesystem", err)
	}
	if sig := detectFile(t, loop); sig.Kind != KindBtrfs {
		t.Errorf("device carries %v, want the damaged btrfs left alone", sig)
	}

	note, err := newVolume(t, cfg).Ensure(ctx)
	if err != nil || !strings.Contains(note, "redid an interrupted format") {
		t.Fatalf("Ensure with the journal: got %q, %v; want the format redone", note, err)
	}
	checkMountedVolume(t, cfg, loop)
}

// TestUnmount: Unmount undoes Ensure's mounts, subvolumes first, and the
// loop device it attached goes with them; a busy subvolume is named and
// keeps the top level mounted; a mount that is not the volume's is left.
func TestUnmount(t *testing.T) {
	requireMountTests(t)
	ctx := context.Background()
	img := newImage(t, imageSize)
	t.Cleanup(func() { waitNoLoop(t, img) })
	cfg := testConfig(t, img)
	v := newVolume(t, cfg)
	if done, err := v.Unmount(); err != nil || len(done) != 0 {
		t.Fatalf("Unmount before Ensure: %v, %v; want nothing done, no error", done, err)
	}
	if _, err := v.Ensure(ctx); err != nil {
		t.Fatalf("Ensure: %v", err)
	}

	// A busy subvolume: a directory in it is the working directory of a
	// process, which makes unmount fail with EBUSY.
	busy := exec.Command("sleep", "600")
	busy.Dir = cfg.Subvolumes[1].Target
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	done, err := v.Unmount()
	if err == nil || !strings.Contains(err.Error(), "@containerd") || !errors.Is(err, unix.EBUSY) {
		t.Errorf("Unmount with @containerd busy: %v, want EBUSY naming @containerd", err)
	}
	// @containerd, the last subvolume, is tried first and fails; @docker
	// is unmounted.
	if len(done) != 1 || done[0] != cfg.Subvolumes[0].Target {
		t.Errorf("unmounted %v, want only %s", done, cfg.Subvolumes[0].Target)
	}
	if got := mountsAt(t, cfg.MountPoint, cfg.Subvolumes[1].Target); len(got) != 2 {
		t.Errorf("mounts left with a busy subvolume: %v, want the top level and @containerd", got)
	}
	_ = busy.Process.Kill()
	_ = busy.Wait()

	done, err = v.Unmount()
	if err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	if want := []string{cfg.Subvolumes[1].Target, cfg.MountPoint}; !reflect.DeepEqual(done, want) {
		t.Errorf("unmounted %v, want %v", done, want)
	}
	if got := mountsAt(t, volumePaths(cfg)...); len(got) != 0 {
		t.Errorf("still mounted: %v", got)
	}
	waitNoLoop(t, img) // autoclear
}
