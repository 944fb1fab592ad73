package runtime

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	goruntime "runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// testRegistry is go-containerregistry's registry on 127.0.0.1 (plain
// HTTP, which dockerd allows for 127.0.0.0/8 without being told), counting
// the manifest requests, so the test knows dockerd really pulled.
type testRegistry struct {
	srv       *httptest.Server
	manifests atomic.Int64
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/manifests/") && req.Method == http.MethodGet {
			r.manifests.Add(1)
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// host is the registry's 127.0.0.1:port.
func (r *testRegistry) host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

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

// applets are the commands the image links to busybox.
var applets = []string{"sh", "echo", "cat", "sleep", "touch", "ls"}

// busyboxImage is a one-layer image made from the machine's static
// busybox (busybox-static): /bin/busybox, links to it, /tmp, and a config
// with PATH and a default command.
func busyboxImage(t testing.TB, busybox string) v1.Image {
	t.Helper()
	if f, err := elf.Open(busybox); err == nil {
		dynamic := f.Section(".interp") != nil
		f.Close()
		if dynamic {
			testenv.RequireFile(t, busybox+" as a static binary (busybox-static)")
		}
	}
	bb, err := os.ReadFile(busybox)
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
	for _, d := range []string{"bin/", "etc/", "dev/", "proc/", "sys/"} {
		add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb)
	for _, a := range applets {
		add(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
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
		Architecture: goruntime.GOARCH,
		Config:       v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"/bin/sh"}},
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
