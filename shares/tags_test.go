package shares

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeFiles makes a fake sysfs: path (relative to root) to content; a
// path ending in / is a directory.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(rel, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadTags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  TagInfo
	}{
		{"Linux 6.9 and later list the tags", map[string]string{
			"fs/virtiofs/3/tag":                 "arcbox\n",
			"fs/virtiofs/4/tag":                 "users\n",
			"bus/virtio/devices/virtio3/device": "0x001a\n",
		}, TagInfo{Listed: true, Tags: []string{"arcbox", "users"}}},
		{"an empty listing: virtiofs loaded, no device", map[string]string{
			"fs/virtiofs/":                      "", // the directory alone
			"bus/virtio/devices/virtio0/device": "0x001a\n",
		}, TagInfo{Listed: true}},
		{"older kernels: count the virtio-fs devices", map[string]string{
			"bus/virtio/devices/virtio0/device": "0x0001\n",
			"bus/virtio/devices/virtio1/device": "0x001a\n",
			"bus/virtio/devices/virtio2/device": "0x001a\n",
			"bus/virtio/devices/virtio3/device": "0x0013\n",
		}, TagInfo{Devices: 2}},
		{"virtio devices, none a file system", map[string]string{
			"bus/virtio/devices/virtio0/device": "0x0005\n",
			"bus/virtio/devices/virtio1/device": "garbage",
		}, TagInfo{}},
		{"no virtio bus: no VM", map[string]string{"kernel/x": ""}, TagInfo{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeFiles(t, root, tc.files)
			got, err := ReadTags(root)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ReadTags = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTagInfoLacks(t *testing.T) {
	for _, tc := range []struct {
		info TagInfo
		tag  string
		want bool
	}{
		{TagInfo{Listed: true, Tags: []string{"users"}}, "users", false},
		{TagInfo{Listed: true, Tags: []string{"users"}}, "arcbox", true},
		{TagInfo{Listed: true}, "arcbox", true},
		{TagInfo{Devices: 0}, "arcbox", true},
		{TagInfo{Devices: 1}, "arcbox", false},
		{TagInfo{Devices: -1}, "arcbox", false},
	} {
		if got := tc.info.lacks(tc.tag); got != tc.want {
			t.Errorf("%+v.lacks(%q) = %v, want %v", tc.info, tc.tag, got, tc.want)
		}
	}
}
