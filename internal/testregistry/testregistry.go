// Package testregistry serves OCI images to tests from go-containerregistry's
// registry on 127.0.0.1, and builds small images from the machine's static
// busybox, so no test pulls from a public registry.
package testregistry

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Registry is a registry on 127.0.0.1 over plain HTTP (which dockerd and
// the agent allow for loopback without being told), remembering the paths
// of the GET requests it served so a test can tell what was pulled.
type Registry struct {
	srv    *httptest.Server
	mu     sync.Mutex
	gets   []string
	holds  []*hold
	stalls []*stall
}

// hold is a Hold in force: the GET requests whose path contains part wait
// until released is closed.
type hold struct {
	part     string
	arrived  chan string
	released chan struct{}
}

// stall is a Stall in force: the GET responses whose path contains part
// send their first after bytes, then wait until released is closed.
type stall struct {
	part     string
	after    int64
	reached  chan struct{}
	once     sync.Once
	released chan struct{}
}

// stallWriter sends a response's first bytes, then waits for its stall's
// release before the rest.
type stallWriter struct {
	http.ResponseWriter
	st   *stall
	done <-chan struct{} // the request's: the client went away
	left int64           // bytes to send before the stall; -1 past it
}

func (w *stallWriter) Write(p []byte) (int, error) {
	if w.left < 0 || int64(len(p)) <= w.left {
		if w.left >= 0 {
			w.left -= int64(len(p))
		}
		return w.ResponseWriter.Write(p)
	}
	n, err := w.ResponseWriter.Write(p[:w.left])
	if err != nil {
		return n, err
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	w.st.once.Do(func() { close(w.st.reached) })
	select {
	case <-w.st.released:
	case <-w.done:
		return n, http.ErrAbortHandler
	}
	w.left = -1
	m, err := w.ResponseWriter.Write(p[n:])
	return n + m, err
}

// New starts a registry that stops when the test ends.
func New(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var held *hold
		if req.Method == http.MethodGet {
			r.mu.Lock()
			r.gets = append(r.gets, req.URL.Path)
			for _, hd := range r.holds {
				if strings.Contains(req.URL.Path, hd.part) {
					held = hd
				}
			}
			for _, st := range r.stalls {
				if strings.Contains(req.URL.Path, st.part) {
					w = &stallWriter{ResponseWriter: w, st: st, done: req.Context().Done(), left: st.after}
				}
			}
			r.mu.Unlock()
		}
		if held != nil {
			select {
			case held.arrived <- req.URL.Path:
			default: // nobody is told twice; the request waits all the same
			}
			select {
			case <-held.released:
			case <-req.Context().Done(): // the client went away (a killed agent)
				return
			}
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// Host is the registry's 127.0.0.1:port.
func (r *Registry) Host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

// Gets counts the GET requests whose path contains part, such as
// "/manifests/" or "/blobs/sha256:…".
func (r *Registry) Gets(part string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, p := range r.gets {
		if strings.Contains(p, part) {
			n++
		}
	}
	return n
}

// Hold makes the GET requests whose path contains part (such as
// "/blobs/") wait, so a test can act while a client is in the middle of a
// pull. The path of the first request held is sent on arrived (it has room
// for one). release lets the held requests and those to come through; the
// end of the test releases them too. A push is not held: it sends no GET
// for blobs.
func (r *Registry) Hold(t testing.TB, part string) (arrived <-chan string, release func()) {
	t.Helper()
	hd := &hold{part: part, arrived: make(chan string, 1), released: make(chan struct{})}
	r.mu.Lock()
	r.holds = append(r.holds, hd)
	r.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			r.mu.Lock()
			r.holds = slices.DeleteFunc(r.holds, func(h *hold) bool { return h == hd })
			r.mu.Unlock()
			close(hd.released)
		})
	}
	// Registered after New's, so it runs before the server is closed,
	// which waits for the requests in progress.
	t.Cleanup(release)
	return hd.arrived, release
}

// Stall slows the GET responses whose path contains part (such as
// "/blobs/sha256:…"), so a test can watch a download in the middle: each
// sends its first after bytes (its headers too) and flushes them, then
// waits for release before the rest. reached is closed once the first
// response has sent them. The end of the test releases them too.
func (r *Registry) Stall(t testing.TB, part string, after int64) (reached <-chan struct{}, release func()) {
	t.Helper()
	st := &stall{part: part, after: after, reached: make(chan struct{}), released: make(chan struct{})}
	r.mu.Lock()
	r.stalls = append(r.stalls, st)
	r.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			r.mu.Lock()
			r.stalls = slices.DeleteFunc(r.stalls, func(s *stall) bool { return s == st })
			r.mu.Unlock()
			close(st.released)
		})
	}
	// Registered after New's, so it runs before the server is closed.
	t.Cleanup(release)
	return st.reached, release
}

// Push uploads img as ref (HOST/REPO:TAG).
func (r *Registry) Push(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// Busybox describes a one-layer image made from a static busybox.
type Busybox struct {
	Path    string            // the static busybox; "" is /bin/busybox
	Applets []string          // links to busybox under /bin
	Dirs    []string          // directories besides bin, etc and tmp (mode 1777)
	Files   map[string]string // path in the image -> content
	Config  v1.Config         // Env, Cmd, WorkingDir...
}

// Image builds the image.
func (b Busybox) Image(t testing.TB) v1.Image {
	t.Helper()
	path := b.Path
	if path == "" {
		path = "/bin/busybox"
	}
	bb, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		t.Helper()
		h.Format = tar.FormatPAX
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range append([]string{"bin", "etc"}, b.Dirs...) {
		add(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb)
	for _, a := range b.Applets {
		add(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	names := make([]string, 0, len(b.Files))
	for n := range b.Files {
		names = append(names, n)
	}
	sort.Strings(names) // the same files give the same digest
	for _, n := range names {
		add(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644}, []byte(b.Files[n]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH, Config: b.Config})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
