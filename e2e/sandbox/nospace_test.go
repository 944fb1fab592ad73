package sandbox

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// TestStateDirFull: an agent whose state directory is a small tmpfs, made
// full. What is right on a full state directory:
//
//   - create, checkpoint and restore must write (a record, a layer): each
//     fails with 507 and a message about space, and leaves nothing: no
//     sandbox or snapshot listed, no directory in the state.
//   - stop must record that the sandbox is stopped, else a restarted agent
//     would find it "ready" with no container and blame its init: it fails
//     with 507 and the sandbox stays ready, its init untouched. (A stop
//     that manages to record its outcome may succeed; the restart below
//     then shows it stopped.)
//   - remove frees space and must never be refused for the lack of it: it
//     removes (204), and the sandbox does not come back.
//   - a sandbox whose start the full disk broke (its image could not be
//     stored) is failed.
//
// Then the space is freed and the agent killed and started again: every
// sandbox and snapshot is as the API last reported it. Today create
// answers 503 and checkpoint 500, and a stop answers 200 while its record
// keeps "ready", so the sandbox comes back failed.
func TestStateDirFull(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	dir := filepath.Join(suite.dir, "state-full")
	state := filepath.Join(dir, "state")
	// The OCI runtime's state on a tmpfs of its own: what the runtime
	// frees when a container is deleted must not make room for the
	// records on the full one.
	for _, m := range []struct{ dir, size string }{{state, "64m"}, {filepath.Join(state, "runtime"), "16m"}} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", m.dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size="+m.size); err != nil {
			t.Fatalf("mount a tmpfs on %s: %v", m.dir, err)
		}
		t.Cleanup(func() { // after the agent is stopped and its sandboxes removed
			if err := unix.Unmount(m.dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", m.dir, err)
			}
		})
	}
	reg := testregistry.New(t)
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: dir}, registries: []string{reg.Host()}})
	c := a.Client(t)

	const (
		stopped      = "full-stop"    // stopped on the full disk
		checkpointed = "full-ckpt"    // checkpointed on the full disk
		removed      = "full-remove"  // removed on the full disk
		starting     = "full-start"   // starting when the disk fills
		created      = "full-create"  // created on the full disk
		restored     = "full-restore" // restored on the full disk
	)
	for _, id := range []string{stopped, checkpointed, removed} {
		a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id)})
	}
	a.sh(t, checkpointed, "dd if=/dev/zero of=/tmp/data bs=1024 count=1024 2>/dev/null")
	snap := a.checkpoint(t, checkpointed, api.CheckpointRequest{Name: agenttest.Ptr("before-full")})
	snapDirs := dirNames(t, filepath.Join(state, "snapshots"))

	// A sandbox whose image download is held while the disk fills.
	ref := reg.Host() + "/test/state-full:1"
	reg.Push(t, ref, busyboxImage(t, "state-full-"+time.Now().Format(time.RFC3339Nano)))
	arrived, release := reg.Hold(t, "/blobs/")
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(starting)})
	a.createOnly(t, api.CreateSandboxRequest{Id: agenttest.Ptr(starting), Image: agenttest.Ptr(ref)})
	select {
	case <-arrived:
	case <-time.After(waitTimeout):
		t.Fatalf("the agent did not fetch the image within %s", waitTimeout)
	}

	full := fillFS(t, state)
	release()
	for ev := evs.next(); ev.Action != "ready" && ev.Action != "failed"; ev = evs.next() {
	}
	if info := a.get(t, starting); info.State != "failed" {
		t.Errorf("a sandbox whose image had no room: %s, want failed", info.State)
	} else {
		t.Logf("%s: failed: %s", starting, agenttest.Deref(info.Error))
	}
	full.top() // the failed download's files are gone

	full.top()
	r, err := c.CreateSandboxWithResponse(reqCtx(t), api.CreateSandboxRequest{Id: agenttest.Ptr(created)})
	if err != nil {
		t.Fatal(err)
	}
	wantNoSpace(t, "create", r.HTTPResponse, r.Body)
	a.assertGone(t, created)

	initPid := a.initPid(t, stopped)
	full.top()
	if r, err := c.StopSandboxWithResponse(reqCtx(t), stopped, api.StopSandboxRequest{TimeoutSeconds: agenttest.Ptr[int64](5)}); err != nil {
		t.Fatal(err)
	} else if r.StatusCode() == http.StatusOK {
		t.Logf("stop succeeded on a full disk: %s; after the restart it must be stopped", r.Body)
	} else {
		wantNoSpace(t, "stop", r.HTTPResponse, r.Body)
		if info := a.get(t, stopped); info.State != "ready" || a.initPid(t, stopped) != initPid {
			t.Errorf("after a stop refused for space: %s; want ready, its init untouched", info.State)
		}
	}

	freeze := freezeFile(t, a.initPid(t, checkpointed))
	full.top()
	if r, err := c.CheckpointSandboxWithResponse(reqCtx(t), checkpointed, api.CheckpointRequest{Name: agenttest.Ptr("on-full")}); err != nil {
		t.Fatal(err)
	} else {
		wantNoSpace(t, "checkpoint", r.HTTPResponse, r.Body)
	}
	if ids := a.snapshotIDs(t, api.ListSnapshotsParams{}); !slices.Equal(ids, []string{snap.SnapshotId}) {
		t.Errorf("snapshots after a checkpoint on a full disk: %v, want only %s", ids, snap.SnapshotId)
	}
	if got := dirNames(t, filepath.Join(state, "snapshots")); !slices.Equal(got, snapDirs) {
		t.Errorf("snapshot directories after a checkpoint on a full disk: %v, want %v", got, snapDirs)
	}
	if isFrozen(freeze) {
		t.Errorf("%s is left frozen by a checkpoint that failed", checkpointed)
		thaw(t, freeze)
	}
	if info := a.get(t, checkpointed); info.State != "ready" {
		t.Errorf("after a checkpoint on a full disk: %s, want ready", info.State)
	}

	full.top()
	if r, err := c.RestoreSnapshotWithResponse(reqCtx(t), snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr(restored)}); err != nil {
		t.Fatal(err)
	} else {
		wantNoSpace(t, "restore", r.HTTPResponse, r.Body)
	}
	a.assertGone(t, restored)

	full.top()
	a.remove(t, removed, false) // 204, and nothing left of it

	// What the API says now is what must come back.
	reported := a.states(t)
	snapsReported := a.snapshots(t, api.ListSnapshotsParams{})
	t.Logf("reported on the full disk: %v", reported)

	if err := os.Remove(full.path); err != nil {
		t.Fatal(err)
	}
	a.crashAndRestart(t)
	if got := a.states(t); !mapsEqual(got, reported) {
		t.Errorf("after freeing the space and a restart: %v; the API reported %v", got, reported)
	}
	b, _ := json.Marshal(snapsReported)
	if f, _ := json.Marshal(a.snapshots(t, api.ListSnapshotsParams{})); string(b) != string(f) {
		t.Errorf("snapshots after the restart: %s; the API reported %s", f, b)
	}
	for _, id := range []string{stopped, checkpointed} {
		if reported[id] == "ready" {
			if out := a.sh(t, id, "echo alive"); out != "alive\n" {
				t.Errorf("%s after the restart: %q", id, out)
			}
		}
	}
	for _, id := range []string{created, restored, removed} {
		a.assertGone(t, id)
	}
	for id := range a.states(t) {
		a.remove(t, id, true)
	}
	a.deleteSnapshot(t, snap.SnapshotId, snap.SnapshotDir)
}

// wantNoSpace requires a 507 whose message is about space.
func wantNoSpace(t *testing.T, what string, resp *http.Response, body []byte) {
	t.Helper()
	var e api.Error
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != http.StatusInsufficientStorage || !strings.Contains(strings.ToLower(e.Message), "space") {
		t.Errorf("%s on a full state directory: %d %s; want 507 with a message about space", what, resp.StatusCode, body)
	}
}

// states lists the agent's sandboxes and their states.
func (a *agentProc) states(t *testing.T) map[string]string {
	t.Helper()
	r, err := a.Client(t).ListSandboxesWithResponse(reqCtx(t), &api.ListSandboxesParams{})
	if err != nil {
		t.Fatal(err)
	}
	if r.JSON200 == nil {
		t.Fatalf("GET /v1/sandboxes: %d %s", r.StatusCode(), r.Body)
	}
	out := map[string]string{}
	for _, s := range r.JSON200.Sandboxes {
		out[s.Id] = string(s.State)
	}
	return out
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// filler is a file that fills a filesystem to its last page.
type filler struct {
	t    *testing.T
	path string
}

// fillFS fills the filesystem of dir with a file in it.
func fillFS(t *testing.T, dir string) *filler {
	t.Helper()
	f := &filler{t: t, path: filepath.Join(dir, "filler")}
	f.top()
	return f
}

// top fills again what was freed since: an operation that failed half way
// frees what it had written when it cleans up.
func (f *filler) top() {
	f.t.Helper()
	file, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		f.t.Fatal(err)
	}
	defer file.Close()
	buf := make([]byte, 1<<20)
	for _, chunk := range []int{len(buf), 4 << 10, 1} {
		for {
			if _, err := file.Write(buf[:chunk]); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					f.t.Fatalf("fill %s: %v", f.path, err)
				}
				break
			}
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(f.path), &st); err != nil {
		f.t.Fatal(err)
	}
	if st.Bavail != 0 {
		f.t.Fatalf("%s filled, yet %d blocks are free", filepath.Dir(f.path), st.Bavail)
	}
}

// dirNames lists a directory's entries by name.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return names(entries)
}
