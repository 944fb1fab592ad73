package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// withRegistries lists registries: a loopback one is refused unless listed.
func withRegistries(hosts ...string) func(*Config) {
	return func(c *Config) { c.Registries = hosts }
}

// TestOCIImagePolicy: an unlisted loopback registry is refused at create,
// naming the field; an image that took credentials to pull is not served
// from the cache to a create without them; the credentials are nowhere
// in the state dir.
func TestOCIImagePolicy(t *testing.T) {
	const user, password = "puller", "s3cret-registry-password"
	h := registry.New()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if u, p, ok := req.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	open := newOCIEnv(t, "crun")
	_, _, err := open.m.Create(context.Background(), sandbox.Spec{ID: "unlisted", Image: host + "/x:y"})
	if !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), `"image"`) || !strings.Contains(err.Error(), "--registry") {
		t.Errorf("an unlisted loopback registry: %v", err)
	}

	e := newOCIEnv(t, "crun", withRegistries(host))
	ref := host + "/private/busybox:v1"
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, tarLayer(t, func(tw *tar.Writer) { tarDir(t, tw, testRootfs) }))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: user, Password: password})); err != nil {
		t.Fatal(err)
	}
	auth := &sandbox.RegistryAuth{Username: user, Password: password}
	e.create(sandbox.Spec{ID: "with", Image: ref, RegistryAuth: auth})
	e.track("without")
	if _, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: "without", Image: ref}); err != nil {
		t.Fatal(err)
	}
	e.waitState("without", sandbox.StateFailed)
	if info, _ := e.m.Get("without"); !strings.Contains(info.Error, "pulled with credentials") {
		t.Errorf("a create without credentials: %q", info.Error)
	}
	e.create(sandbox.Spec{ID: "again", Image: ref, RegistryAuth: auth})
	err = filepath.WalkDir(e.cfg.StateDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		if err == nil && bytes.Contains(data, []byte(password)) {
			t.Errorf("%s holds the registry password", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tarLayer makes a layer from tar entries written by fill.
func tarLayer(t *testing.T, fill func(tw *tar.Writer)) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	fill(tw)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// tarDir writes the tree under dir into tw.
func tarDir(t *testing.T, tw *tar.Writer, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = rel
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(tw, f)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func addFile(t *testing.T, tw *tar.Writer, name, content string, mode int64) {
	t.Helper()
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(content)), Typeflag: tar.TypeReg, ModTime: time.Unix(1e9, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
}

// pushTestImage builds a two-layer image from the busybox rootfs (the
// second layer deletes a file of the first, empties a directory, and adds
// a marker) and pushes it.
func pushTestImage(t *testing.T, reg *testregistry.Registry) (string, []v1.Layer) {
	t.Helper()
	base := tarLayer(t, func(tw *tar.Writer) {
		tarDir(t, tw, testRootfs)
		addFile(t, tw, "etc/removed-later", "old\n", 0o644)
		addFile(t, tw, "opaque/old-file", "old\n", 0o644)
	})
	top := tarLayer(t, func(tw *tar.Writer) {
		addFile(t, tw, "etc/.wh.removed-later", "", 0o644)
		addFile(t, tw, "opaque/.wh..wh..opq", "", 0o644)
		addFile(t, tw, "opaque/new-file", "new\n", 0o644)
		addFile(t, tw, "etc/image-marker", "from the image\n", 0o644)
	})
	img, err := mutate.AppendLayers(empty.Image, base, top)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "IMAGE_VAR=from-image"}, WorkingDir: "/srv/app"})
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Host() + "/test/busybox:v1"
	reg.Push(t, ref, img)
	return ref, []v1.Layer{base, top}
}

// TestOCIImage: an image from a loopback registry makes working
// sandboxes; two concurrent creates pull it once; later creates use the
// cache.
func TestOCIImage(t *testing.T) {
	reg := testregistry.New(t)
	e := newOCIEnv(t, "crun", withRegistries(reg.Host()))
	ref, layers := pushTestImage(t, reg)
	blobGets := func(l v1.Layer) int {
		d, _ := l.Digest()
		return reg.Gets("/blobs/" + d.String())
	}
	before := map[v1.Layer]int{}
	for _, l := range layers {
		before[l] = blobGets(l)
	}

	var wg sync.WaitGroup
	for _, id := range []string{"img1", "img2"} {
		e.track(id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: id, Image: ref}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	e.expect("img1", sandbox.ActionReady)
	sandboxtest.WaitFor(t, "img2 ready", func() bool { info, _ := e.m.Get("img2"); return info.State == sandbox.StateReady })
	for _, l := range layers {
		if n := blobGets(l) - before[l]; n != 1 {
			d, _ := l.Digest()
			t.Errorf("layer %s downloaded %d times, want 1", d, n)
		}
	}
	out := e.sh("img1", `cat /etc/image-marker; echo "$IMAGE_VAR"; pwd; ls /opaque; test -e /etc/removed-later && echo still-there || echo removed`)
	if out != "from the image\nfrom-image\n/srv/app\nnew-file\nremoved\n" {
		t.Errorf("in the image sandbox: %q", out)
	}
	e.sh("img2", "echo changed > /etc/image-marker")
	if out := e.sh("img1", "cat /etc/image-marker"); out != "from the image\n" {
		t.Errorf("one sandbox's write reached another's: %q", out)
	}
	// A third create finds the image in the cache: no download at all.
	gets := reg.Gets("/")
	e.create(sandbox.Spec{ID: "img3", Image: ref})
	if n := reg.Gets("/") - gets; n != 0 {
		t.Errorf("a cached image was downloaded again: %d requests", n)
	}
}

// TestExtractStaysInRoot: an image's symlinks, ".." and hard links never
// make the unpacking touch anything outside its root.
func TestExtractStaysInRoot(t *testing.T) {
	testenv.RequireRoot(t)
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		fill    func(tw *tar.Writer)
		wantErr bool
		inside  string // a file that must exist in the root afterwards
	}{
		{"absolute symlink dir", func(tw *tar.Writer) {
			writeHeader(t, tw, &tar.Header{Name: "escape", Typeflag: tar.TypeSymlink, Linkname: outside})
			addFile(t, tw, "escape/pwned", "x", 0o644)
		}, true, ""},
		{"relative symlink dir", func(tw *tar.Writer) {
			writeHeader(t, tw, &tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../.."})
			addFile(t, tw, "up/pwned", "x", 0o644)
		}, false, "pwned"},
		{"dotdot name", func(tw *tar.Writer) {
			addFile(t, tw, "../../pwned", "x", 0o644)
		}, false, "pwned"},
		{"symlink file then write", func(tw *tar.Writer) {
			writeHeader(t, tw, &tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: secret})
			addFile(t, tw, "link", "overwritten", 0o644)
		}, false, "link"},
		{"hard link out", func(tw *tar.Writer) {
			writeHeader(t, tw, &tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: "../../../../../../.." + secret})
		}, true, ""},
		{"setuid and device", func(tw *tar.Writer) {
			addFile(t, tw, "bin/tool", "#!/bin/sh\n", 0o4755)
			writeHeader(t, tw, &tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666})
		}, false, "bin/tool"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			c.fill(tw)
			tw.Close()
			err := extractTar(&buf, root)
			if (err != nil) != c.wantErr {
				t.Errorf("extractTar: %v, want error %v", err, c.wantErr)
			}
			entries, _ := os.ReadDir(outside)
			if data, _ := os.ReadFile(secret); len(entries) != 1 || string(data) != "host" {
				t.Fatalf("extraction touched the outside: %v, secret %q", entries, data)
			}
			if c.inside != "" {
				if _, err := os.Lstat(filepath.Join(root, c.inside)); err != nil {
					t.Errorf("%s not inside the root: %v", c.inside, err)
				}
			}
		})
	}
	root := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	addFile(t, tw, "bin/tool", "#!/bin/sh\n", 0o4755)
	writeHeader(t, tw, &tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666})
	tw.Close()
	if err := extractTar(&buf, root); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(root, "bin/tool")); err != nil || st.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("setuid bit lost: %v, %v", st, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "dev/null")); !os.IsNotExist(err) {
		t.Errorf("a device node was made: %v", err)
	}
}

func writeHeader(t *testing.T, tw *tar.Writer, h *tar.Header) {
	t.Helper()
	if err := tw.WriteHeader(h); err != nil {
		t.Fatal(err)
	}
}

// TestOCIImageConfig: a sandbox made from an image runs its entrypoint and
// cmd when a run names no program, as its user, in its working directory,
// with its environment; the create request's fields and then the run's
// win over the image's; an agent restart and a restore keep the config;
// an image an earlier agent cached without entrypoint and cmd gets them
// from its manifest, its layers not downloaded again.
func TestOCIImageConfig(t *testing.T) {
	reg := testregistry.New(t)
	e := newOCIEnv(t, "crun", withRegistries(reg.Host()))
	ref := reg.Host() + "/test/app:v1"
	img := testregistry.Busybox{
		Applets: []string{"sh", "echo", "id", "pwd"},
		Files: map[string]string{
			"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
			"etc/group":  "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
		},
		Config: v1.Config{
			Entrypoint: []string{"/bin/sh", "-c"},
			Cmd:        []string{`echo "run:$GREETING:$KEEP:$(pwd):$(id -u):$(id -g):$HOME"`},
			Env:        []string{"PATH=/bin", "GREETING=image", "KEEP=image"},
			WorkingDir: "/srv/app",
			User:       "app:staff",
		},
	}.Image(t)
	reg.Push(t, ref, img)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}

	e.create(sandbox.Spec{ID: "app", Image: ref})
	// run resolves the command as the API does, then runs it.
	run := func(id string, p sandbox.Process) string {
		t.Helper()
		p, err := e.m.ResolveCmd(id, p)
		if err != nil {
			t.Fatalf("ResolveCmd in %s: %v", id, err)
		}
		out, errOut, code := e.run(id, p)
		if code != 0 {
			t.Fatalf("%s: %q: exit %d, stderr %q", id, p.Cmd, code, errOut)
		}
		return out
	}
	const imageDefault = "run:image:image:/srv/app:1000:50:/home/app\n"
	if out := run("app", sandbox.Process{}); out != imageDefault {
		t.Errorf("a run without cmd: %q, want %q", out, imageDefault)
	}
	// The run's own fields win; its cmd runs as given, without the entrypoint.
	out := run("app", sandbox.Process{Cmd: []string{"sh", "-c", `echo "$GREETING:$KEEP:$(pwd):$(id -u):$(id -g)"`},
		Env: map[string]string{"GREETING": "run"}, WorkingDir: "/tmp", User: "0"})
	if want := "run:image:/tmp:0:0\n"; out != want {
		t.Errorf("a run with its own fields: %q, want %q", out, want)
	}
	// Env of its own only: the image's command with the run's variable.
	if out := run("app", sandbox.Process{Env: map[string]string{"KEEP": "run"}}); out != "run:image:run:/srv/app:1000:50:/home/app\n" {
		t.Errorf("a run without cmd, with env: %q", out)
	}

	// The create request's fields lie over the image's, under the run's.
	e.create(sandbox.Spec{ID: "over", Image: ref, Env: map[string]string{"GREETING": "create"}, WorkingDir: "/work", User: "1000"})
	if out, want := run("over", sandbox.Process{}), "run:create:image:/work:1000:1000:/home/app\n"; out != want {
		t.Errorf("a run in a sandbox whose create set env, working dir and user: %q, want %q", out, want)
	}
	if out, want := run("over", sandbox.Process{User: "app:0"}), "run:create:image:/work:1000:0:/home/app\n"; out != want {
		t.Errorf("name:gid over the create's user: %q, want %q", out, want)
	}

	checkConfig := func(id string) {
		t.Helper()
		cfg, err := e.m.ImageConfig(id)
		want := sandbox.ImageConfig{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{`echo "run:$GREETING:$KEEP:$(pwd):$(id -u):$(id -g):$HOME"`},
			Env: []string{"PATH=/bin", "GREETING=image", "KEEP=image"}, WorkingDir: "/srv/app", User: "app:staff"}
		if err != nil || cfg == nil || !reflect.DeepEqual(*cfg, want) {
			t.Errorf("ImageConfig(%s) = %+v, %v; want %+v", id, cfg, err, want)
		}
	}
	checkConfig("app")
	checkConfig("over")

	// An agent restart keeps it.
	e.restart(nil)
	checkConfig("app")
	if out := run("app", sandbox.Process{}); out != imageDefault {
		t.Errorf("after a restart, a run without cmd: %q", out)
	}

	// So does a restore.
	ctx := context.Background()
	snap, err := e.m.Checkpoint(ctx, "app", sandbox.CheckpointRequest{Name: "with-config"})
	if err != nil {
		t.Fatal(err)
	}
	e.track("copy")
	if _, err := e.m.Restore(ctx, snap.ID, sandbox.RestoreRequest{ID: "copy"}); err != nil {
		t.Fatal(err)
	}
	checkConfig("copy")
	if out := run("copy", sandbox.Process{}); out != imageDefault {
		t.Errorf("in a restored sandbox, a run without cmd: %q", out)
	}

	// An image an earlier agent cached, with a config.json of env,
	// working_dir and user only.
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	cached := filepath.Join(e.cfg.StateDir, "images", digestKey(digest.String()), "config.json")
	if err := os.WriteFile(cached, []byte(`{"env":["PATH=/bin"],"working_dir":"/srv/app","user":"app:staff"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	before := reg.Gets("/blobs/" + layer.String())
	e.create(sandbox.Spec{ID: "stale", Image: ref})
	if n := reg.Gets("/blobs/" + layer.String()); n != before {
		t.Errorf("the layer of an image cached by an earlier agent was downloaded again")
	}
	checkConfig("stale")
	if out := run("stale", sandbox.Process{}); out != imageDefault {
		t.Errorf("an image cached by an earlier agent, a run without cmd: %q", out)
	}
}
