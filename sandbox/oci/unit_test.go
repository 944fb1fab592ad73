package oci

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox"
)

func TestResolveUser(t *testing.T) {
	files := map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n# comment\nbad:line\n",
		"/etc/group":  "root:x:0:\nalice:x:1000:\nstaff:x:50:alice,bob\nwheel:x:10:alice\n",
	}
	read := func(name string) ([]byte, error) {
		if s, ok := files[name]; ok {
			return []byte(s), nil
		}
		return nil, os.ErrNotExist
	}
	cases := []struct {
		spec string
		want execUser
		err  bool
	}{
		{"", execUser{Home: "/root"}, false},
		{"0", execUser{Home: "/root"}, false},
		{"alice", execUser{UID: 1000, GID: 1000, AdditionalGIDs: []uint32{50, 10}, Home: "/home/alice"}, false},
		{"alice:staff", execUser{UID: 1000, GID: 50, AdditionalGIDs: []uint32{10}, Home: "/home/alice"}, false},
		{"1234", execUser{UID: 1234, Home: "/"}, false},
		{"1234:99", execUser{UID: 1234, GID: 99, Home: "/"}, false},
		{"1000:7", execUser{UID: 1000, GID: 7, AdditionalGIDs: []uint32{50, 10}, Home: "/home/alice"}, false},
		{"mallory", execUser{}, true},
		{"alice:nogroup", execUser{}, true},
	}
	for _, c := range cases {
		got, err := resolveUser("user", c.spec, read)
		if c.err {
			if !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), `field "user"`) {
				t.Errorf("resolveUser(%q) err = %v, want sandbox.ErrInvalid naming user", c.spec, err)
			}
			continue
		}
		if err != nil || got.UID != c.want.UID || got.GID != c.want.GID || got.Home != c.want.Home ||
			len(got.AdditionalGIDs) != len(c.want.AdditionalGIDs) {
			t.Errorf("resolveUser(%q) = %+v, %v; want %+v", c.spec, got, err, c.want)
			continue
		}
		for i := range got.AdditionalGIDs {
			if got.AdditionalGIDs[i] != c.want.AdditionalGIDs[i] {
				t.Errorf("resolveUser(%q) groups %v, want %v", c.spec, got.AdditionalGIDs, c.want.AdditionalGIDs)
			}
		}
	}
	// Without /etc/passwd, numeric users still work.
	none := func(string) ([]byte, error) { return nil, os.ErrNotExist }
	if u, err := resolveUser("user", "5:6", none); err != nil || u.UID != 5 || u.GID != 6 {
		t.Errorf("resolveUser without passwd = %+v, %v", u, err)
	}
}

func TestProcessEnv(t *testing.T) {
	got := strings.Join(processEnv([]string{"PATH=/img", "A=img", "B=img"}, map[string]string{"B": "sb", "C": "sb"},
		map[string]string{"C": "p"}, "/home/x", true), " ")
	want := "A=img B=sb C=p HOME=/home/x PATH=/img TERM=xterm"
	if got != want {
		t.Errorf("processEnv = %q, want %q", got, want)
	}
}

func TestEnsureBusyboxRootfs(t *testing.T) {
	bb := testenv.RequireBinary(t, "busybox")
	dir := filepath.Join(t.TempDir(), "rootfs", "default")
	if err := EnsureBusyboxRootfs(dir, bb); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"bin/busybox", "etc/passwd", "etc/group", "tmp", "proc", "sys", "dev"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin", "sh")); err != nil || target != "/bin/busybox" {
		t.Errorf("bin/sh -> %q, %v; want /bin/busybox", target, err)
	}
	if err := EnsureBusyboxRootfs(dir, bb); err != nil {
		t.Errorf("second call: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 {
		t.Errorf("temporary dirs left: %v", entries)
	}
}
