package oci

import (
	"io"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// TestPullMeterCountsEachLayerWhole: reading an image's layers through a
// meter tells, for each layer, its start at 0, growth that never goes
// back, and its end at its full size, though the unpacking stops reading
// at each tar's end, before the compressed blob's (the meter reads the
// rest, so the blob's digest is checked too).
func TestPullMeterCountsEachLayerWhole(t *testing.T) {
	img, err := random.Image(256<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var told []sandbox.PullProgress
	pm := newPullMeter(func(p sandbox.PullProgress) {
		mu.Lock()
		defer mu.Unlock()
		told = append(told, p)
	})
	metered, err := pm.meter(img)
	if err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(metered)
	if _, err := io.Copy(io.Discard, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if err := pm.close(); err != nil {
		t.Fatalf("a whole image's meter failed: %v", err)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		digest, _ := l.Digest()
		size, _ := l.Size()
		var got []sandbox.PullProgress
		for _, p := range told {
			if p.Layer == digest.String() {
				got = append(got, p)
			}
		}
		if len(got) < 2 || got[0].Done != 0 || got[len(got)-1].Done != size {
			t.Errorf("layer %s (%d bytes): told %+v; want 0 first and %d last", digest, size, got, size)
			continue
		}
		for i, p := range got {
			if p.Total != size || (i > 0 && p.Done < got[i-1].Done) {
				t.Errorf("layer %s: told %+v; want the total %d throughout and done never going back", digest, got, size)
				break
			}
		}
	}
}
