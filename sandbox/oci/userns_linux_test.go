package oci

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// fakeUserns counts the namespaces usernsAhead makes, by range, and fails
// while fail is set; each is an open file of its own.
type fakeUserns struct {
	mu    sync.Mutex
	made  map[sandbox.IDMap]int
	fail  bool
	files map[*os.File]sandbox.IDMap
}

func (f *fakeUserns) make(m sandbox.IDMap) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.made[m]++
	if f.fail {
		return nil, errors.New("no namespace now")
	}
	file, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	f.files[file] = m
	return file, nil
}

func (f *fakeUserns) setFail(fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fail
}

func (f *fakeUserns) count(m sandbox.IDMap) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.made[m]
}

// TestUsernsAhead: the namespace made ahead is the one taken for its
// range, and made once; another range gets one of its own; prepare
// replaces one made for another range; one made ahead that failed is
// made again when taken; after close, nothing is made ahead.
func TestUsernsAhead(t *testing.T) {
	f := &fakeUserns{made: map[sandbox.IDMap]int{}, files: map[*os.File]sandbox.IDMap{}}
	u := usernsAhead{newUserns: f.make}
	a := sandbox.IDMap{HostID: idPoolStart, Size: sandbox.IDRangeSize}
	b := sandbox.IDMap{HostID: idPoolStart + sandbox.IDRangeSize, Size: sandbox.IDRangeSize}
	got := func(c <-chan usernsResult) (sandbox.IDMap, error) {
		t.Helper()
		r := <-c
		if r.err != nil {
			return sandbox.IDMap{}, r.err
		}
		defer r.f.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.files[r.f], nil
	}

	u.prepare(sandbox.IDMap{}) // no range: nothing to make
	u.prepare(a)
	u.prepare(a) // made already
	if m, err := got(u.take(b)); m != b || err != nil {
		t.Errorf("take(b) while a was made ahead: %+v, %v", m, err)
	}
	if m, err := got(u.take(a)); m != a || err != nil || f.count(a) != 1 {
		t.Errorf("take(a): %+v, %v; a made %d times, want once", m, err, f.count(a))
	}
	if m, err := got(u.take(a)); m != a || err != nil || f.count(a) != 2 {
		t.Errorf("take(a) again: %+v, %v; a made %d times, want twice", m, err, f.count(a))
	}

	u.prepare(a)
	u.prepare(b) // replaces a's
	if m, err := got(u.take(b)); m != b || err != nil || f.count(b) != 2 {
		t.Errorf("take(b) after prepare(a), prepare(b): %+v, %v; b made %d times, want twice", m, err, f.count(b))
	}

	// One made ahead that failed is made again when taken.
	f.setFail(true)
	u.prepare(a)
	r := <-u.c // made ahead, and failed: put back for take
	again := make(chan usernsResult, 1)
	again <- r
	u.c = again
	f.setFail(false)
	if m, err := got(u.take(a)); r.err == nil || m != a || err != nil {
		t.Errorf("take(a) of one that failed ahead (%v): %+v, %v, want one made again", r.err, m, err)
	}

	u.prepare(b)
	u.close()
	u.prepare(a)
	if u.c != nil {
		t.Error("a namespace was made ahead after close")
	}
}

// TestUsernsFile: usernsFile's namespace maps uid 0 to the range's first
// host id: a file of uid 0 seen through an idmapped mount made with it is
// owned by that id.
func TestUsernsFile(t *testing.T) {
	testenv.RequireIsolated(t)
	m := sandbox.IDMap{HostID: idPoolStart, Size: sandbox.IDRangeSize}
	ns, err := usernsFile(m)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	src, target := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := mountIDMapped(src, target, ns); err != nil {
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
	if st.Uid != m.HostID || st.Gid != m.HostID {
		t.Errorf("through the idmapped mount: %d:%d, want %d:%d", st.Uid, st.Gid, m.HostID, m.HostID)
	}
}
