package sandbox

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// TestImagePullProgress: a sandbox made from an image whose one layer the
// registry sends half of and then holds tells the layer's download as
// image.pull events: done 0 at its start, the half while it is held (the
// test lets the rest through only once it has seen it), done == total at
// its end, all between created and ready, done never going back. A
// second sandbox of the image, from the cache, has no image.pull event.
func TestImagePullProgress(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	reg := testregistry.New(t)
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "pull-progress")}, registries: []string{reg.Host()}})
	img := busyboxImage(t, "pull-progress-"+time.Now().Format(time.RFC3339Nano)) // not in the agent's cache
	ref := reg.Host() + "/test/pull-progress:1"
	reg.Push(t, ref, img)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	digest, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	size, err := layers[0].Size()
	if err != nil {
		t.Fatal(err)
	}
	_, release := reg.Stall(t, "/blobs/"+digest.String(), size/2)

	const id = "pulled"
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(id)})
	a.createOnly(t, api.CreateSandboxRequest{Id: agenttest.Ptr(id), Image: agenttest.Ptr(ref)})
	evs.expect(id, "created")

	var dones []int64
	released := false
	for {
		ev := evs.next()
		if ev.Action == "ready" {
			break
		}
		if ev.Action == "failed" {
			t.Fatalf("the sandbox failed: %v", attrs(ev))
		}
		if ev.Action != api.EventActionImagePull {
			t.Fatalf("%s before ready: %v", ev.Action, attrs(ev))
		}
		at := attrs(ev)
		if at["image"] != ref || at["layer"] != digest.String() || at["total"] != strconv.FormatInt(size, 10) {
			t.Fatalf("image.pull %v; want image %s, layer %s, total %d", at, ref, digest, size)
		}
		done, err := strconv.ParseInt(at["done"], 10, 64)
		if err != nil || done < 0 || done > size {
			t.Fatalf("image.pull done %q of %d", at["done"], size)
		}
		if n := len(dones); (n == 0 && done != 0) || (n > 0 && done < dones[n-1]) {
			t.Fatalf("image.pull done %d after %v: want 0 first, then never less", done, dones)
		}
		dones = append(dones, done)
		if !released && done > 0 && done < size {
			// Seen in the middle of the layer: let the rest come.
			released = true
			release()
		}
	}
	t.Logf("image.pull done of %d: %v", size, dones)
	if !released {
		t.Errorf("no image.pull event while the layer was half downloaded: %v", dones)
	}
	if n := len(dones); n == 0 || dones[n-1] != size {
		t.Errorf("the last image.pull before ready: %v, want done == total %d", dones, size)
	}

	// From the cache: nothing is downloaded, so nothing is told.
	const again = "pulled-again"
	evs = a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(again)})
	a.createOnly(t, api.CreateSandboxRequest{Id: agenttest.Ptr(again), Image: agenttest.Ptr(ref)})
	evs.expect(again, "created", "ready")
	a.remove(t, id, false)
	a.remove(t, again, false)
}
