package oci

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// nsOwner is the owner a file of uid 0 has through an idmapped mount made
// with the user namespace c gets: the first host id of its mapping.
func nsOwner(t *testing.T, c <-chan usernsResult) uint32 {
	t.Helper()
	r := <-c
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.f.Close()
	src, target := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := mountIDMapped(src, target, r.f); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unmount(target); err != nil {
			t.Error(err)
		}
	}()
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(target, "f"), &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid
}

// TestUsernsAhead: the namespace made ahead is the one taken for its
// range; another range gets one of its own, and prepare replaces one made
// for another range. After close, nothing is made ahead.
func TestUsernsAhead(t *testing.T) {
	testenv.RequireIsolated(t)
	a := sandbox.IDMap{HostID: idPoolStart, Size: sandbox.IDRangeSize}
	b := sandbox.IDMap{HostID: idPoolStart + sandbox.IDRangeSize, Size: sandbox.IDRangeSize}
	var u usernsAhead
	u.prepare(sandbox.IDMap{}) // no range: nothing to make
	if u.c != nil {
		t.Fatal("prepare of the zero IDMap made a namespace")
	}
	u.prepare(a)
	made := u.c
	u.prepare(a) // made already
	if u.c != made {
		t.Error("prepare of the same range made another namespace")
	}
	if got := nsOwner(t, u.take(b)); got != b.HostID {
		t.Errorf("take(b) while a was made ahead: owner %d, want %d", got, b.HostID)
	}
	if u.c != made {
		t.Error("take of another range dropped the one made ahead")
	}
	c := u.take(a)
	if c != made || u.c != nil {
		t.Errorf("take(a) did not give the namespace made ahead for it")
	}
	if got := nsOwner(t, c); got != a.HostID {
		t.Errorf("the namespace made ahead for a: owner %d, want %d", got, a.HostID)
	}
	u.prepare(a)
	u.prepare(b) // replaces a's
	if u.idmap != b {
		t.Errorf("made ahead for %+v, want b", u.idmap)
	}
	if got := nsOwner(t, u.take(b)); got != b.HostID {
		t.Errorf("take(b): owner %d, want %d", got, b.HostID)
	}
	u.prepare(a)
	u.close()
	u.prepare(b)
	if u.c != nil {
		t.Error("a namespace was made ahead after close")
	}
}
