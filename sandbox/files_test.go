package sandbox

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/events"
)

// filesBackend is the fake backend with a files API: it records what
// OpenFiles was asked, and its trees do nothing.
type filesBackend struct {
	*fakeBackend
	mu     sync.Mutex
	opened []FilesRequest
	last   *closedTree
	// during, when set, runs inside OpenFiles (a stop racing it, say).
	during func()
}

func (b *filesBackend) OpenFiles(id string, r FilesRequest) (FileTree, error) {
	b.mu.Lock()
	b.opened = append(b.opened, r)
	during := b.during
	b.mu.Unlock()
	if during != nil {
		during()
	}
	tree := &closedTree{}
	b.mu.Lock()
	b.last = tree
	b.mu.Unlock()
	return tree, nil
}

// closedTree is a FileTree that notes its Close.
type closedTree struct {
	FileTree
	closed bool
}

func (t *closedTree) Close() error { t.closed = true; return nil }

func newFilesHarness(t *testing.T) (*harness, *filesBackend) {
	h := &harness{t: t, backend: newFakeBackend(), clock: newFakeClock(), dir: t.TempDir()}
	b := &filesBackend{fakeBackend: h.backend}
	m, err := newManager(context.Background(), Config{StateDir: h.dir, IDRangeDir: t.TempDir(), Now: h.clock.Now}, b, h.clock.AfterFunc)
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	sub, err := m.Events().Subscribe(events.Live(), events.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	h.events = sub
	t.Cleanup(func() { m.Close(context.Background()) })
	return h, b
}

// TestFilesStates: a ready sandbox's files open, with its id range, and
// read-only when only read; an unknown sandbox is ErrNotFound, a stopped
// one and a write to a read-only root ErrConflict, a backend without
// files ErrUnavailable.
func TestFilesStates(t *testing.T) {
	h, b := newFilesHarness(t)
	info := h.createReady(Spec{ID: "box"})
	tree, err := h.m.Files("box", true)
	if err != nil {
		t.Fatalf("Files: %v", err)
	}
	tree.Close()
	tree, err = h.m.Files("box", false)
	if err != nil {
		t.Fatalf("Files (read): %v", err)
	}
	tree.Close()
	b.mu.Lock()
	got := b.opened
	b.mu.Unlock()
	if len(got) != 2 || got[0].IDMap != info.Security.IDMap || got[0].ReadOnly != "" || got[1].ReadOnly == "" {
		t.Errorf("OpenFiles got %+v, want the id range %+v, writable then read-only", got, info.Security.IDMap)
	}

	if _, err := h.m.Files("nope", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown sandbox: %v, want ErrNotFound", err)
	}
	h.createReady(Spec{ID: "ro", Security: Security{ReadOnlyRootfs: true}})
	if _, err := h.m.Files("ro", true); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("write to a read-only root: %v, want ErrConflict saying so", err)
	}
	if tree, err := h.m.Files("ro", false); err != nil {
		t.Errorf("read of a read-only root: %v", err)
	} else {
		tree.Close()
	}
	if _, err := h.m.Stop(context.Background(), "box", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Files("box", false); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("stopped sandbox: %v, want ErrConflict naming the state", err)
	}

	plain := newHarness(t)
	plain.createReady(Spec{ID: "box"})
	if _, err := plain.m.Files("box", false); !errors.Is(err, ErrUnavailable) {
		t.Errorf("backend without files: %v, want ErrUnavailable", err)
	}
}

// TestFilesStopRace: a stop that begins while the tree is being opened
// wins: the tree is closed and the answer is ErrConflict, since the root
// may be unmounted under it.
func TestFilesStopRace(t *testing.T) {
	h, b := newFilesHarness(t)
	h.createReady(Spec{ID: "box"})
	b.during = func() {
		if _, err := h.m.Stop(context.Background(), "box", time.Second); err != nil {
			t.Errorf("Stop: %v", err)
		}
	}
	got, err := h.m.Files("box", false)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("Files racing a stop: %v, %v; want ErrConflict", got, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.opened) != 1 || !b.last.closed {
		t.Fatalf("OpenFiles called %d times, its tree closed: %v; want once, closed", len(b.opened), b.last != nil && b.last.closed)
	}
}

// TestCheckFilePath: the paths the files API refuses, each naming the
// field.
func TestCheckFilePath(t *testing.T) {
	for _, p := range []string{"", "etc/passwd", "./x", "/a/../../etc", "/..", "/a\x00b", "/" + strings.Repeat("a", MaxFilePath)} {
		err := CheckFilePath("path", p)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"path"`) {
			t.Errorf("CheckFilePath(%q) = %v, want ErrInvalid naming path", p, err)
		}
	}
	for _, p := range []string{"/", "/etc/passwd", "/a/./b", "/a//b/", "/..a/b.."} {
		if err := CheckFilePath("path", p); err != nil {
			t.Errorf("CheckFilePath(%q) = %v", p, err)
		}
	}
}

// TestIDMapFiles: ids map into the range and back; what is outside it is
// refused going in and shown as the overflow id coming out.
func TestIDMapFiles(t *testing.T) {
	m := IDMap{HostID: 1 << 30, Size: IDRangeSize}
	if h, err := m.ToHost("uid", 1000); err != nil || h != 1<<30+1000 {
		t.Errorf("ToHost(1000) = %d, %v", h, err)
	}
	if _, err := m.ToHost("uid", IDRangeSize); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"uid"`) {
		t.Errorf("ToHost(size) = %v, want ErrInvalid naming uid", err)
	}
	for host, want := range map[uint32]uint32{1 << 30: 0, 1<<30 + 5: 5, 0: overflowOwner, 1<<30 + IDRangeSize: overflowOwner} {
		if got := m.ToSandbox(host); got != want {
			t.Errorf("ToSandbox(%d) = %d, want %d", host, got, want)
		}
	}
	none := IDMap{}
	if h, _ := none.ToHost("uid", 7); h != 7 || none.ToSandbox(7) != 7 {
		t.Error("without a user namespace ids are the host's")
	}
}
