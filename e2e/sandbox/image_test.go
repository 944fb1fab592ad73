package sandbox

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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/arcbox/arcbox-agent/api"
)

// testRegistry is go-containerregistry's registry served on loopback,
// counting the blob downloads.
type testRegistry struct {
	srv  *httptest.Server
	mu   sync.Mutex
	gets map[string]int // blob digest -> GETs
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	r := &testRegistry{gets: map[string]int{}}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if _, digest, ok := strings.Cut(req.URL.Path, "/blobs/"); ok && req.Method == http.MethodGet {
			r.mu.Lock()
			r.gets[digest]++
			r.mu.Unlock()
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// host is the registry's 127.0.0.1:port.
func (r *testRegistry) host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

func (r *testRegistry) blobGets(digest string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[digest]
}

// push uploads img as ref.
func (r *testRegistry) push(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// busyboxApplets are the commands the test image links to busybox.
var busyboxApplets = []string{"sh", "echo", "cat", "pwd", "true", "sleep", "ps", "ls", "dd", "head"}

// busyboxImage is a one-layer image made from this machine's static
// busybox: /bin/busybox and links to it, /etc/passwd, /etc/motd, /tmp, and
// /etc/build-id holding buildID (a different one makes a different
// image); its config sets PATH, GREETING and the working directory /srv.
func busyboxImage(t testing.TB, buildID string) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		h.Format = tar.FormatPAX
		if data != nil {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if data != nil {
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range []string{"bin/", "etc/", "srv/"} {
		add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb)
	for _, app := range busyboxApplets {
		add(&tar.Header{Name: "bin/" + app, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	add(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	add(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("baked in\n"))
	add(&tar.Header{Name: "etc/build-id", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(buildID+"\n"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS:           "linux",
		Architecture: runtime.GOARCH,
		Config: v1.Config{
			Env:        []string{"PATH=/bin", "GREETING=from-image"},
			WorkingDir: "/srv",
			Cmd:        []string{"/bin/sh"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestImageFromLoopbackRegistry: a sandbox made from an image the test
// serves on 127.0.0.1 (plain HTTP, as the agent does for loopback
// registries) has the image's files and config (env, working directory);
// its writes stay its own, so a second sandbox of the image sees the
// image as pushed; the layer is downloaded once, then served from the
// agent's cache.
func TestImageFromLoopbackRegistry(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.logOnFailure(t)
	reg := newTestRegistry(t)
	// A new image each time: the agent's cache, keyed by digest, must
	// not have it already (go test -count=2).
	img := busyboxImage(t, time.Now().Format(time.RFC3339Nano))
	ref := reg.host() + "/test/busybox:1"
	reg.push(t, ref, img)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layerDigest, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}

	first := a.create(t, api.CreateSandboxRequest{Id: ptr("img-1"), Image: ptr(ref)})
	wantBin := append([]string{"busybox"}, busyboxApplets...)
	slices.Sort(wantBin)
	if got := strings.Fields(a.sh(t, first, "ls /bin")); !slices.Equal(got, wantBin) {
		t.Errorf("/bin holds %v, want the image's %v", got, wantBin)
	}
	res := a.run(t, first, api.RunRequest{Cmd: []string{"sh", "-c", `echo "$GREETING"; pwd; cat /etc/motd`}})
	if string(res.Stdout) != "from-image\n/srv\nbaked in\n" || res.Code != 0 {
		t.Errorf("in the image: stdout %q, stderr %q, exit %d; want the image's env, working dir and motd", res.Stdout, res.Stderr, res.Code)
	}
	if out := a.sh(t, first, "echo changed > /etc/motd; cat /etc/motd"); out != "changed\n" {
		t.Errorf("after writing /etc/motd: %q", out)
	}

	second := a.create(t, api.CreateSandboxRequest{Id: ptr("img-2"), Image: ptr(ref)})
	if out := a.sh(t, second, "cat /etc/motd"); out != "baked in\n" {
		t.Errorf("a second sandbox of the image reads /etc/motd %q, want the image's (the first sandbox's write leaked)", out)
	}
	if n := reg.blobGets(layerDigest.String()); n != 1 {
		t.Errorf("the layer was downloaded %d times for two sandboxes, want once", n)
	}
	a.remove(t, first, false)
	a.remove(t, second, false)
}

// TestAgentRestart: the agent is killed (SIGKILL) with two sandboxes alive
// and one of them dies while it is down. Started again on the same state,
// it re-adopts the live one (same init, its files, its labels and env; it
// runs commands and reports events) and marks the other failed with the
// reason; both are removed without a trace.
func TestAgentRestart(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	a, err := startAgent(suite.dir + "/restart")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.stop(); err != nil {
			t.Error(err)
		}
	})
	a.logOnFailure(t)

	const live, dead = "survivor", "casualty"
	a.create(t, api.CreateSandboxRequest{Id: ptr(live), Labels: &map[string]string{"keep": "yes"}, Env: &map[string]string{"FROM_CREATE": "kept"}})
	a.create(t, api.CreateSandboxRequest{Id: ptr(dead)})
	a.sh(t, live, "echo before > /tmp/mark")
	before := a.get(t, live)
	livePid, deadPid := a.initPid(t, live), a.initPid(t, dead)

	if err := a.kill(); err != nil {
		t.Fatal(err)
	}
	if err := syscallKill(deadPid); err != nil {
		t.Fatalf("kill the init of %s: %v", dead, err)
	}
	if err := a.start(); err != nil {
		t.Fatal(err)
	}

	after := a.get(t, live)
	if after.State != "ready" || after.CreatedAt != before.CreatedAt || after.Labels == nil || (*after.Labels)["keep"] != "yes" ||
		after.LastExitCode == nil || *after.LastExitCode != 0 {
		t.Errorf("after the restart: %+v; before: %+v", after, before)
	}
	if pid := a.initPid(t, live); pid != livePid {
		t.Errorf("the init is %d after the restart, %d before: the sandbox was remade, not re-adopted", pid, livePid)
	}
	evs := a.events(t, api.StreamEventsParams{Id: ptr(live)})
	res := a.run(t, live, api.RunRequest{Cmd: []string{"sh", "-c", `echo "$FROM_CREATE"; cat /tmp/mark`}})
	if string(res.Stdout) != "kept\nbefore\n" || res.Code != 0 {
		t.Errorf("after the restart: stdout %q, stderr %q, exit %d; want kept, before, 0", res.Stdout, res.Stderr, res.Code)
	}
	evs.expect(live, "running", "idle")

	failed := a.get(t, dead)
	if failed.State != "failed" || failed.Error == nil || *failed.Error == "" {
		t.Errorf("the sandbox whose init died while the agent was down: %+v; want failed with the reason", failed)
	} else {
		t.Logf("%s: %s", dead, *failed.Error)
	}
	a.remove(t, dead, false)
	a.remove(t, live, false)
}
