package oci

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// pullProgressEvery is how often the progress of a layer's download is
// told while it grows: often enough to watch, seldom enough that a slow
// pull does not flood the event journal.
const pullProgressEvery = 100 * time.Millisecond

// meteredImage is an image whose layers count the bytes read from their
// compressed blobs into a pullMeter. mutate.Extract reads an image
// through Layers only.
type meteredImage struct {
	v1.Image
	layers []v1.Layer
}

func (m *meteredImage) Layers() ([]v1.Layer, error) { return m.layers, nil }

// meter wraps img so that reading its layers is measured by pm.
func (pm *pullMeter) meter(img v1.Image) (v1.Image, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	out := &meteredImage{Image: img}
	for _, l := range layers {
		digest, err := l.Digest()
		if err != nil {
			return nil, err
		}
		size, err := l.Size()
		if err != nil {
			return nil, err
		}
		// Uncompressed (what the unpacking reads) is built on the
		// wrapper's Compressed, so every byte passes the count.
		ml, err := partial.CompressedToLayer(&meteredLayer{Layer: l, digest: digest.String(), size: size, pm: pm})
		if err != nil {
			return nil, err
		}
		out.layers = append(out.layers, ml)
	}
	return out, nil
}

// meteredLayer is a layer whose compressed stream is counted.
type meteredLayer struct {
	v1.Layer
	digest string
	size   int64
	pm     *pullMeter
}

func (l *meteredLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	return l.pm.begin(l.digest, l.size, rc), nil
}

// pullMeter tells the progress of one pull's layer downloads: a layer's
// start (done 0) and end (done == total) at once, and how far each layer
// in between has come every pullProgressEvery, when it has moved.
type pullMeter struct {
	tell func(sandbox.PullProgress)
	stop chan struct{}
	wg   sync.WaitGroup
	// abandoned says the unpacking failed: a layer's rest is not worth
	// downloading.
	abandoned atomic.Bool

	mu     sync.Mutex
	active []*meteredReader
	err    error // the first error draining a layer's end
}

// newPullMeter starts a meter that tells tell; close stops it.
func newPullMeter(tell func(sandbox.PullProgress)) *pullMeter {
	pm := &pullMeter{tell: tell, stop: make(chan struct{})}
	pm.wg.Go(pm.tick)
	return pm
}

func (pm *pullMeter) tick() {
	t := time.NewTicker(pullProgressEvery)
	defer t.Stop()
	for {
		select {
		case <-pm.stop:
			return
		case <-t.C:
		}
		pm.mu.Lock()
		for _, r := range pm.active {
			if d := r.done.Load(); d != r.told {
				r.told = d
				pm.tell(sandbox.PullProgress{Layer: r.digest, Done: d, Total: r.total})
			}
		}
		pm.mu.Unlock()
	}
}

// close stops the meter and returns the first error met draining a
// layer: a blob whose bytes past what the unpacking read did not match
// its digest or size fails the pull.
func (pm *pullMeter) close() error {
	close(pm.stop)
	pm.wg.Wait()
	pm.mu.Lock()
	defer pm.mu.Unlock()
	return pm.err
}

// abandon says the unpacking failed: layers closed from now on are not
// read to their end.
func (pm *pullMeter) abandon() { pm.abandoned.Store(true) }

// begin tells that a layer's download begins and returns its stream,
// counted.
func (pm *pullMeter) begin(digest string, total int64, rc io.ReadCloser) *meteredReader {
	r := &meteredReader{rc: rc, pm: pm, digest: digest, total: total}
	pm.mu.Lock()
	defer pm.mu.Unlock()
	pm.active = append(pm.active, r)
	pm.tell(sandbox.PullProgress{Layer: digest, Done: 0, Total: total})
	return r
}

// end tells that r's layer is whole (unless failed) and forgets it.
func (pm *pullMeter) end(r *meteredReader, failed error) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	pm.active = slices.DeleteFunc(pm.active, func(x *meteredReader) bool { return x == r })
	if failed != nil {
		if pm.err == nil {
			pm.err = fmt.Errorf("layer %s: %w", r.digest, failed)
		}
		return
	}
	pm.tell(sandbox.PullProgress{Layer: r.digest, Done: r.done.Load(), Total: r.total})
}

// meteredReader counts the bytes read from a layer's compressed blob.
// The unpacking stops reading at the tar's end, before the blob's: Close
// reads the rest, so the layer is counted whole and its digest checked
// (the registry's reader checks it at the blob's end).
type meteredReader struct {
	rc     io.ReadCloser
	pm     *pullMeter
	digest string
	total  int64
	done   atomic.Int64
	told   int64 // the done last told; pm.mu
	ended  bool  // end was called; only the reading goroutine
}

func (r *meteredReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.done.Add(int64(n))
	if errors.Is(err, io.EOF) && !r.ended {
		r.ended = true
		r.pm.end(r, nil)
	}
	return n, err
}

func (r *meteredReader) Close() error {
	if !r.ended {
		// Read ends it at the blob's end; a failure before ends it here.
		var err error
		if r.pm.abandoned.Load() {
			err = errors.New("the unpacking failed")
		} else {
			_, err = io.Copy(io.Discard, readerOnly{r})
		}
		if err != nil && !r.ended {
			r.ended = true
			r.pm.end(r, err)
		}
	}
	return r.rc.Close()
}

// readerOnly hides a reader's other methods from io.Copy.
type readerOnly struct{ io.Reader }
