package pid1

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestMountMissingMountsOnlyWhatIsMissing(t *testing.T) {
	have := map[string]int64{"/proc": 1, "/sys": 99} // /sys holds the wrong filesystem
	var mounted, made []string
	m := Mounter{
		FSType: func(p string) (int64, error) {
			if v, ok := have[p]; ok {
				return v, nil
			}
			return 0, os.ErrNotExist
		},
		Mount:    func(mt Mount) error { mounted = append(mounted, mt.Target); return nil },
		MkdirAll: func(p string, _ os.FileMode) error { made = append(made, p); return nil },
	}
	mounts := []Mount{
		{Target: "/proc", FSType: "proc", Magic: 1},
		{Target: "/sys", FSType: "sysfs", Magic: 2},
		{Target: "/run", FSType: "tmpfs", Magic: 3},
	}
	if err := m.MountMissing(quiet, mounts); err != nil {
		t.Fatal(err)
	}
	if want := []string{"/sys", "/run"}; !reflect.DeepEqual(mounted, want) {
		t.Errorf("mounted %v, want %v", mounted, want)
	}
	if want := []string{"/sys", "/run"}; !reflect.DeepEqual(made, want) {
		t.Errorf("made %v, want %v", made, want)
	}
}

func TestMountMissingReportsEveryFailure(t *testing.T) {
	m := Mounter{
		FSType:   func(string) (int64, error) { return 0, nil },
		Mount:    func(mt Mount) error { return errors.New("EPERM") },
		MkdirAll: func(string, os.FileMode) error { return nil },
	}
	err := m.MountMissing(quiet, []Mount{{Target: "/a", FSType: "proc", Magic: 1}, {Target: "/b", FSType: "sysfs", Magic: 2}})
	if err == nil || !strings.Contains(err.Error(), "mount proc on /a: EPERM") || !strings.Contains(err.Error(), "mount sysfs on /b: EPERM") {
		t.Fatalf("err = %v, want both failures named", err)
	}
}

type fakeProc struct {
	kids   []int
	states map[int]byte
	starts map[int]uint64
	reaped []int
}

func (f *fakeProc) children() ([]int, error) { return f.kids, nil }
func (f *fakeProc) stat(pid int) (byte, uint64, error) {
	s, ok := f.states[pid]
	if !ok {
		return 0, 0, os.ErrNotExist
	}
	return s, f.starts[pid], nil
}
func (f *fakeProc) reap(pid int) (bool, error) { f.reaped = append(f.reaped, pid); return true, nil }

func TestReapOrphansLeavesOwnedChildren(t *testing.T) {
	fp := &fakeProc{
		kids:   []int{10, 11, 12, 13},
		states: map[int]byte{10: 'Z', 11: 'Z', 12: 'S', 13: 'Z'},
		starts: map[int]uint64{10: 100, 11: 200, 12: 300, 13: 400},
	}
	r := &Reaper{logger: quiet, proc: fp, owned: map[int]uint64{
		11: 200, // ours: left to its Wait
		13: 399, // pid reused by a process that is not ours: reaped
		99: 1,   // ours and already waited for: forgotten
	}}
	got := r.ReapOrphans()
	if want := []int{10, 13}; !reflect.DeepEqual(got, want) {
		t.Errorf("reaped %v, want %v", got, want)
	}
	if _, ok := r.owned[99]; ok {
		t.Error("a waited-for child is still recorded as owned")
	}
	if _, ok := r.owned[11]; !ok {
		t.Error("a live owned child was forgotten")
	}
}

// TestReapGrace: a zombie nobody owns is left for a grace period, during
// which a library's own Wait may collect it, and reaped after.
func TestReapGrace(t *testing.T) {
	fp := &fakeProc{
		kids:   []int{20, 21},
		states: map[int]byte{20: 'Z', 21: 'Z'},
		starts: map[int]uint64{20: 1, 21: 2},
	}
	now := time.Unix(1000, 0)
	r := &Reaper{logger: quiet, proc: fp, grace: time.Second, now: func() time.Time { return now }, owned: map[int]uint64{}}
	if got := r.ReapOrphans(); len(got) != 0 || !r.Pending() {
		t.Fatalf("first sight: reaped %v, pending %v; want nothing reaped, pending", got, r.Pending())
	}
	// 21 is collected by its owner's Wait meanwhile: it is gone.
	fp.kids = []int{20}
	delete(fp.states, 21)
	now = now.Add(500 * time.Millisecond)
	if got := r.ReapOrphans(); len(got) != 0 {
		t.Fatalf("within the grace: reaped %v", got)
	}
	now = now.Add(600 * time.Millisecond)
	if got := r.ReapOrphans(); !reflect.DeepEqual(got, []int{20}) || r.Pending() {
		t.Fatalf("after the grace: reaped %v, pending %v; want [20], none", got, r.Pending())
	}
}

// TestReapGraceSurvivesAMissedListing: a scan of the children files may miss
// a child moving between threads; a zombie waiting out the grace is still
// reaped.
func TestReapGraceSurvivesAMissedListing(t *testing.T) {
	fp := &fakeProc{kids: []int{30}, states: map[int]byte{30: 'Z'}, starts: map[int]uint64{30: 5}}
	now := time.Unix(1000, 0)
	r := &Reaper{logger: quiet, proc: fp, grace: time.Second, now: func() time.Time { return now }, owned: map[int]uint64{}}
	r.ReapOrphans()
	fp.kids = nil // missed by the listing
	now = now.Add(2 * time.Second)
	if got := r.ReapOrphans(); !reflect.DeepEqual(got, []int{30}) {
		t.Fatalf("reaped %v, want [30]", got)
	}
}
