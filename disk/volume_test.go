package disk

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewVolumeDefaults(t *testing.T) {
	v, err := NewVolume(Config{Device: "/dev/vdb"})
	if err != nil {
		t.Fatal(err)
	}
	c := v.cfg
	if c.MountPoint != DefaultMountPoint || c.StateDir != DefaultStateDir || c.MountInfoPath != DefaultMountInfoPath ||
		c.SysDir != DefaultSysDir || c.DevDir != DefaultDevDir {
		t.Errorf("defaults not applied: %+v", c)
	}
	if len(c.Subvolumes) != 2 || c.Subvolumes[0] != (Subvolume{"@docker", "/var/lib/docker"}) ||
		c.Subvolumes[1] != (Subvolume{"@containerd", "/var/lib/containerd"}) {
		t.Errorf("got subvolumes %+v, want the defaults", c.Subvolumes)
	}
	v, err = NewVolume(Config{Device: "/dev/vdb", Subvolumes: []Subvolume{}})
	if err != nil || len(v.cfg.Subvolumes) != 0 {
		t.Errorf("empty subvolume list: got %+v, %v; want none", v.cfg.Subvolumes, err)
	}
}

func TestNewVolumeValidation(t *testing.T) {
	sv := func(name, target string) []Subvolume { return []Subvolume{{name, target}} }
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"minimal", Config{Device: "/dev/vdb"}, true},
		{"extra subvolume", Config{Device: "/dev/vdb", Subvolumes: append(DefaultSubvolumes(), Subvolume{"@sandboxes", "/var/lib/arcbox/sandboxes"})}, true},
		{"unclean paths are cleaned", Config{Device: "/dev//vdb", MountPoint: "/run/x/../data/"}, true},
		{"no device", Config{}, false},
		{"relative device", Config{Device: "vdb"}, false},
		{"relative mount point", Config{Device: "/dev/vdb", MountPoint: "data"}, false},
		{"relative state dir", Config{Device: "/dev/vdb", StateDir: "state"}, false},
		{"relative mkfs", Config{Device: "/dev/vdb", MkfsPath: "mkfs.btrfs"}, false},
		{"relative mountinfo", Config{Device: "/dev/vdb", MountInfoPath: "proc/self/mountinfo"}, false},
		{"empty name", Config{Device: "/dev/vdb", Subvolumes: sv("", "/x")}, false},
		{"dot name", Config{Device: "/dev/vdb", Subvolumes: sv("..", "/x")}, false},
		{"slash in name", Config{Device: "/dev/vdb", Subvolumes: sv("a/b", "/x")}, false},
		{"comma in name", Config{Device: "/dev/vdb", Subvolumes: sv("a,ro", "/x")}, false},
		{"long name", Config{Device: "/dev/vdb", Subvolumes: sv(strings.Repeat("a", 256), "/x")}, false},
		{"relative target", Config{Device: "/dev/vdb", Subvolumes: sv("@a", "x")}, false},
		{"target is mount point", Config{Device: "/dev/vdb", Subvolumes: sv("@a", DefaultMountPoint)}, false},
		{"target inside mount point", Config{Device: "/dev/vdb", Subvolumes: sv("@a", DefaultMountPoint+"/a")}, false},
		{"mount point inside target", Config{Device: "/dev/vdb", MountPoint: "/var/lib/docker/raw"}, false},
		{"duplicate name", Config{Device: "/dev/vdb", Subvolumes: []Subvolume{{"@a", "/x"}, {"@a", "/y"}}}, false},
		{"duplicate target", Config{Device: "/dev/vdb", Subvolumes: []Subvolume{{"@a", "/x"}, {"@b", "/x/"}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewVolume(tt.cfg)
			if tt.ok && err != nil {
				t.Errorf("got %v, want no error", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("got %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	const refuse = action(-1)
	type planCase struct {
		kind         Kind
		intent, wipe bool
		want         action
	}
	tests := []planCase{
		{KindBtrfs, false, false, actMount},
		{KindBtrfs, true, true, actMount},
		{KindBlank, false, false, actFormat},
		{KindBlank, true, true, actFormat},
		{KindBtrfsIncomplete, false, false, refuse},
		{KindBtrfsIncomplete, true, false, actReformat},
		{KindBtrfsIncomplete, false, true, actReformat},
		{KindUnknown, false, false, refuse},
		{KindUnknown, true, false, actReformat},
		{KindUnknown, false, true, actReformat},
	}
	for _, k := range []Kind{KindExt2, KindExt3, KindExt4, KindXFS, KindSwap, KindLUKS, KindMBR, KindGPT} {
		tests = append(tests,
			planCase{k, false, false, refuse},
			planCase{k, true, false, refuse}, // the journal never erases a named filesystem
			planCase{k, false, true, actReformat},
		)
	}
	for _, tt := range tests {
		got, err := plan(Signature{Kind: tt.kind, Offset: 0x438}, tt.intent, tt.wipe)
		if tt.want == refuse {
			if !errors.Is(err, ErrForeignFilesystem) {
				t.Errorf("%s intent=%v wipe=%v: got %v, %v; want ErrForeignFilesystem", tt.kind, tt.intent, tt.wipe, got, err)
				continue
			}
			for _, s := range []string{string(tt.kind), "--wipe-data-device", "ARCBOX_WIPE_DATA_DEVICE=true"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%s: error %q does not mention %q", tt.kind, err, s)
				}
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s intent=%v wipe=%v: got %v, %v; want %v", tt.kind, tt.intent, tt.wipe, got, err, tt.want)
		}
	}
}

func TestJournal(t *testing.T) {
	j := journal{path: filepath.Join(t.TempDir(), "state", journalName)}
	if p, err := j.pending("block 254:16"); p || err != nil {
		t.Fatalf("empty journal: got %v, %v; want false, nil", p, err)
	}
	if err := j.record("/dev/vdb", "block 254:16"); err != nil {
		t.Fatal(err)
	}
	if p, err := j.pending("block 254:16"); !p || err != nil {
		t.Errorf("same device: got %v, %v; want true, nil", p, err)
	}
	if p, err := j.pending("block 254:32"); p || err != nil {
		t.Errorf("other device: got %v, %v; want false, nil", p, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(j.path))
	if len(entries) != 1 {
		t.Errorf("state dir holds %d files, want only the journal (no temporary left)", len(entries))
	}
	if err := j.clear(); err != nil {
		t.Fatal(err)
	}
	if p, err := j.pending("block 254:16"); p || err != nil {
		t.Errorf("cleared: got %v, %v; want false, nil", p, err)
	}
	if err := j.clear(); err != nil {
		t.Errorf("clearing twice: %v", err)
	}
	if err := os.WriteFile(j.path, []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err := j.pending("block 254:16"); p || err == nil {
		t.Errorf("corrupt journal: got %v, %v; want false and an error", p, err)
	}
}

// statusVolume makes a Volume whose mountinfo is a file the test writes.
func statusVolume(t *testing.T, device string) (*Volume, string, string) {
	t.Helper()
	dir := t.TempDir()
	mp := filepath.Join(dir, "data")
	target := filepath.Join(dir, "docker")
	for _, d := range []string{mp, target} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mi := filepath.Join(dir, "mountinfo")
	v, err := NewVolume(Config{Device: device, MountPoint: mp, MountInfoPath: mi,
		StateDir: filepath.Join(dir, "state"), Subvolumes: []Subvolume{{"@docker", target}}})
	if err != nil {
		t.Fatal(err)
	}
	return v, mi, formatMountInfo([]MountInfo{
		{ID: 1, ParentID: 0, Major: 254, Root: "/", MountPoint: "/", Options: "rw", FSType: "ext4", Source: "/dev/vda", SuperOptions: "rw"},
		{ID: 2, ParentID: 1, Minor: 40, Root: "/", MountPoint: resolvePath(mp), Options: "rw", FSType: "btrfs", Source: "/dev/vdb", SuperOptions: "rw"},
		{ID: 3, ParentID: 1, Minor: 41, Root: "/@docker", MountPoint: resolvePath(target), Options: "rw", FSType: "btrfs", Source: "/dev/vdb", SuperOptions: "rw"},
	})
}

func TestStatusFromMountInfo(t *testing.T) {
	v, mi, mounted := statusVolume(t, "/dev/vdb")

	if err := os.WriteFile(mi, []byte(mounted), 0o644); err != nil {
		t.Fatal(err)
	}
	st := v.Status()
	if !st.Mounted || st.Filesystem != "btrfs" || st.Device != "/dev/vdb" || st.FreeBytes == 0 {
		t.Errorf("mounted: got %+v", st)
	}
	if s := v.ServiceStatus(); s.Name != "data-volume" || s.Status != ServiceReady {
		t.Errorf("mounted: got %+v, want data-volume ready", s)
	}

	// Only the top level mounted: not ready, and the detail names the gap.
	lines := strings.SplitAfter(mounted, "\n")
	if err := os.WriteFile(mi, []byte(lines[0]+lines[1]), 0o644); err != nil {
		t.Fatal(err)
	}
	st = v.Status()
	if st.Mounted || !strings.Contains(st.Detail, v.cfg.Subvolumes[0].Target) {
		t.Errorf("half mounted: got %+v, want not mounted naming %s", st, v.cfg.Subvolumes[0].Target)
	}
	if s := v.ServiceStatus(); s.Status != ServiceNotReady {
		t.Errorf("half mounted: got %+v, want not_ready", s)
	}

	// A subvolume target with the wrong root is not counted as mounted.
	wrong := strings.Replace(mounted, `/@docker`, `/@other`, 1)
	if err := os.WriteFile(mi, []byte(wrong), 0o644); err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); st.Mounted {
		t.Errorf("wrong subvolume: got %+v, want not mounted", st)
	}
}

func TestEnsureDeviceMissing(t *testing.T) {
	v, mi, _ := statusVolume(t, "/nonexistent/arcbox-test-device")
	if err := os.WriteFile(mi, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := v.Ensure(context.Background())
	if !errors.Is(err, ErrDeviceMissing) && !errors.Is(err, ErrNotSupported) {
		t.Fatalf("got %v, want ErrDeviceMissing", err)
	}
	if !strings.Contains(err.Error(), "/nonexistent/arcbox-test-device") {
		t.Errorf("error %q does not name the device", err)
	}
	s := v.ServiceStatus()
	if s.Status != ServiceError || s.Detail != err.Error() {
		t.Errorf("got %+v, want error with detail %q", s, err)
	}
}
