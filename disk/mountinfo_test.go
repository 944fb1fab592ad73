package disk

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseMountInfo(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []MountInfo
	}{
		{
			name: "proc(5) example",
			in:   "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n",
			want: []MountInfo{{ID: 36, ParentID: 35, Major: 98, Minor: 0, Root: "/mnt1", MountPoint: "/mnt2",
				Options: "rw,noatime", Optional: []string{"master:1"}, FSType: "ext3", Source: "/dev/root",
				SuperOptions: "rw,errors=continue"}},
		},
		{
			name: "btrfs subvolume, two optional fields",
			in:   "812 27 0:58 /@docker /var/lib/docker rw,relatime shared:412 master:7 - btrfs /dev/loop3 rw,compress=zstd:3,space_cache=v2,subvolid=256,subvol=/@docker",
			want: []MountInfo{{ID: 812, ParentID: 27, Major: 0, Minor: 58, Root: "/@docker", MountPoint: "/var/lib/docker",
				Options: "rw,relatime", Optional: []string{"shared:412", "master:7"}, FSType: "btrfs", Source: "/dev/loop3",
				SuperOptions: "rw,compress=zstd:3,space_cache=v2,subvolid=256,subvol=/@docker"}},
		},
		{
			name: "escapes",
			in:   `100 27 0:60 / /mnt/with\040space\011tab\012nl\134back rw - tmpfs my\040src rw` + "\n",
			want: []MountInfo{{ID: 100, ParentID: 27, Major: 0, Minor: 60, Root: "/", MountPoint: "/mnt/with space\ttab\nnl\\back",
				Options: "rw", FSType: "tmpfs", Source: "my src", SuperOptions: "rw"}},
		},
		{
			name: "empty source and blank lines",
			in:   "\n22 27 0:21 / /proc rw - proc  rw\n\n",
			want: []MountInfo{{ID: 22, ParentID: 27, Major: 0, Minor: 21, Root: "/", MountPoint: "/proc",
				Options: "rw", FSType: "proc", Source: "", SuperOptions: "rw"}},
		},
		{
			name: "backslash not an escape",
			in:   `1 0 0:1 / /a\9b\0 rw - x \400 rw`,
			want: []MountInfo{{ID: 1, ParentID: 0, Major: 0, Minor: 1, Root: "/", MountPoint: `/a\9b\0`,
				Options: "rw", FSType: "x", Source: `\400`, SuperOptions: "rw"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMountInfo(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("ParseMountInfo: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseMountInfoErrors(t *testing.T) {
	for _, in := range []string{
		"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw", // no separator
		"36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root",                   // too few after it
		"36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw extra",          // too many
		"x 35 98:0 / / rw - ext3 /dev/root rw",
		"36 35 980 / / rw - ext3 /dev/root rw",
		"36 35 98:-1 / / rw - ext3 /dev/root rw",
	} {
		if _, err := ParseMountInfo(strings.NewReader("22 27 0:21 / /proc rw - proc proc rw\n" + in)); err == nil {
			t.Errorf("%q: no error", in)
		} else if !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%q: error %q does not name line 2", in, err)
		}
	}
}

func TestFindMount(t *testing.T) {
	mounts := []MountInfo{{ID: 1, MountPoint: "/a"}, {ID: 2, MountPoint: "/b"}, {ID: 3, MountPoint: "/a"}}
	if m := findMount(mounts, "/a"); m == nil || m.ID != 3 {
		t.Errorf("got %+v, want the last mount on /a (ID 3)", m)
	}
	if m := findMount(mounts, "/c"); m != nil {
		t.Errorf("got %+v, want nil", m)
	}
}

// escapeOctal is the kernel's escaping, the inverse of unescapeOctal.
func escapeOctal(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, `\%03o`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// formatMountInfo writes mounts as the kernel would.
func formatMountInfo(mounts []MountInfo) string {
	var b strings.Builder
	for _, m := range mounts {
		fmt.Fprintf(&b, "%d %d %d:%d %s %s %s", m.ID, m.ParentID, m.Major, m.Minor,
			escapeOctal(m.Root), escapeOctal(m.MountPoint), escapeOctal(m.Options))
		for _, o := range m.Optional {
			fmt.Fprintf(&b, " %s", escapeOctal(o))
		}
		fmt.Fprintf(&b, " - %s %s %s\n", escapeOctal(m.FSType), escapeOctal(m.Source), escapeOctal(m.SuperOptions))
	}
	return b.String()
}

// FuzzParseMountInfo checks the parser never panics, that it rejects a
// line with an error naming the line, and that what it parses, written back
// the kernel's way, parses to the same thing. More seeds are in
// testdata/fuzz/FuzzParseMountInfo.
func FuzzParseMountInfo(f *testing.F) {
	f.Add("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n")
	f.Add(`100 27 0:60 / /mnt/a\040b rw shared:1 - tmpfs a\134b rw`)
	f.Add("1 0 0:1 / / rw - - - -\n")                        // a dash as type, source and options
	f.Add("1 0 0:1 / /- rw - tmpfs - rw\n2 1 0:2 / /a rw -") // a line cut short
	f.Add("4294967296 1 4294967295:4294967296 / / rw - x y z")
	f.Add("-1 +2 0:0 / / rw - x y z")
	f.Add("1 0 0:1 / / rw - x y " + strings.Repeat("o,", 40000)) // longer than the scanner's first buffer
	f.Fuzz(func(t *testing.T, in string) {
		mounts, err := ParseMountInfo(strings.NewReader(in))
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "mountinfo line ") && !strings.HasPrefix(msg, "read mountinfo: ") {
				t.Fatalf("error %q names neither the line nor the read", msg)
			}
			return
		}
		again, err := ParseMountInfo(strings.NewReader(formatMountInfo(mounts)))
		if err != nil {
			t.Fatalf("reparse of %q: %v", formatMountInfo(mounts), err)
		}
		if !reflect.DeepEqual(again, mounts) {
			t.Fatalf("round trip:\n got %#v\nwant %#v", again, mounts)
		}
	})
}

func TestRootIsInitramfs(t *testing.T) {
	initramfs := "1 1 0:1 / / rw - rootfs rootfs rw,size=1000k\n" +
		"20 1 0:20 / /proc rw,nosuid - proc proc rw\n"
	disk := "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
	// An initramfs that mounted a real root over / (switch_root not run):
	// the visible root is the later mount.
	stacked := initramfs + "30 1 254:0 / / rw - ext4 /dev/vda rw\n"
	for _, tt := range []struct {
		name, info string
		want       bool
	}{
		{"initramfs", initramfs, true},
		{"disk", disk, false},
		{"stacked", stacked, false},
	} {
		mounts, err := ParseMountInfo(strings.NewReader(tt.info))
		if err != nil {
			t.Fatal(err)
		}
		if got := rootIsInitramfs(mounts); got != tt.want {
			t.Errorf("%s: rootIsInitramfs = %v, want %v", tt.name, got, tt.want)
		}
	}
}
