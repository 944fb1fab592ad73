package sandbox

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// TestRecordFullStateDir: once its file is made, a record is rewritten
// however full the state dir is; making a new one there fails with
// ErrNoSpace and leaves nothing behind.
func TestRecordFullStateDir(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a small tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	old := filepath.Join(dir, "old")
	if err := os.Mkdir(old, 0o700); err != nil {
		t.Fatal(err)
	}
	store := recordStore{dir: old}
	rec := testRecord("old")
	if err := store.write(rec); err != nil {
		t.Fatal(err)
	}
	fillUp(t, dir)

	for _, st := range []State{StateRunning, StateReady, StateStopping, StateStopped, StateFailed} {
		rec.State = st
		rec.Error = recordText(strings.Repeat("why ", 500))
		if err := store.write(rec); err != nil {
			t.Fatalf("write %s on a full state dir: %v", st, err)
		}
	}
	if got, _, err := readRecord(old); err != nil || got.State != StateFailed {
		t.Fatalf("read back %+v, %v", got, err)
	}

	fresh := filepath.Join(dir, "old", "..", "fresh")
	if err := os.Mkdir(fresh, 0o700); err != nil && !errors.Is(err, unix.ENOSPC) {
		t.Fatal(err)
	} else if err == nil {
		s := recordStore{dir: fresh}
		if err := s.write(testRecord("fresh")); !errors.Is(err, ErrNoSpace) {
			t.Errorf("a new record on a full state dir: %v, want ErrNoSpace", err)
		}
		if entries, _ := os.ReadDir(fresh); len(entries) != 0 {
			t.Errorf("left behind: %v", entries)
		}
	}
}

// fillUp fills the filesystem of dir.
func fillUp(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}
