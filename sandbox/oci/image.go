package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/internal/atomicfile"
	"github.com/arcbox/arcbox-agent/sandbox/registry"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"
)

// imageConfig is what a sandbox takes from its image's config: the
// defaults of its processes, and the command of a process that names
// none. The sandbox's init is the agent's, never the image's entrypoint.
type imageConfig = sandbox.ImageConfig

// cachedConfig is an image's config as the cache keeps it (config.json
// beside the unpacked root). Version tells the configs of every field
// from those an earlier agent wrote, which lack the entrypoint and cmd:
// such an image is not served from the cache until a pull has written its
// config again (its layers are not unpacked again).
type cachedConfig struct {
	imageConfig
	Version int `json:"version,omitempty"`
}

// cachedConfigVersion is the version of cachedConfig that holds every
// field of imageConfig.
const cachedConfigVersion = 2

// pulledImage is an unpacked image in the cache.
type pulledImage struct {
	Rootfs string // the flattened root filesystem, used read-only
	Config imageConfig
	// Private: it took credentials to pull (a file "private" in its
	// directory says so).
	Private bool
}

// privateMark is the file in an image's directory that says its pull
// took credentials.
const privateMark = "private"

// imageStore pulls images and keeps them unpacked, one directory per
// manifest digest under dir. A tag is resolved once and then served from
// the cache (like `docker run` with an image present); concurrent pulls of
// one reference are done once.
type imageStore struct {
	dir      string
	log      *slog.Logger
	policy   *registry.Policy   // which registries, checked by name and at every connection
	authFile *registry.AuthFile // credentials of pulls whose create brings none; nil: none
	tr       http.RoundTripper  // the policy's transport, shared by the pulls
	ctx      context.Context    // pulls outlive the creates that wait on them
	cancel   context.CancelFunc
	platform v1.Platform

	mu      sync.Mutex
	flights map[string]*pullFlight
	pulls   sync.WaitGroup
}

type pullFlight struct {
	done chan struct{}
	img  pulledImage
	err  error

	// watches are told the pull's progress: those of the creates that
	// wait on it, each from when it joined.
	mu      sync.Mutex
	watches []*progressWatch
}

// progressWatch is one create's watch on a flight (a pointer, so that the
// create removes its own).
type progressWatch struct{ fn func(sandbox.PullProgress) }

// watch adds fn (nil: none) and returns it for unwatch.
func (f *pullFlight) watch(fn func(sandbox.PullProgress)) *progressWatch {
	if fn == nil {
		return nil
	}
	w := &progressWatch{fn: fn}
	f.mu.Lock()
	f.watches = append(f.watches, w)
	f.mu.Unlock()
	return w
}

// unwatch removes w (nil: none): it is told nothing after.
func (f *pullFlight) unwatch(w *progressWatch) {
	if w == nil {
		return
	}
	f.mu.Lock()
	f.watches = slices.DeleteFunc(f.watches, func(x *progressWatch) bool { return x == w })
	f.mu.Unlock()
}

// tell gives p to every watch, in the order the pull tells them.
func (f *pullFlight) tell(p sandbox.PullProgress) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.watches {
		w.fn(p)
	}
}

func newImageStore(ctx context.Context, dir string, log *slog.Logger, cfg Config) (*imageStore, error) {
	policy, err := registry.NewPolicy(cfg.Registries)
	if err != nil {
		return nil, err
	}
	var authFile *registry.AuthFile
	if cfg.RegistryAuthFile != "" {
		if authFile, err = registry.LoadAuthFile(cfg.RegistryAuthFile); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "refs"), 0o700); err != nil {
		return nil, err
	}
	// Pulls cut short by a crash leave temporary directories.
	if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".pull-") {
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	return &imageStore{
		dir:      dir,
		log:      log,
		policy:   policy,
		authFile: authFile,
		tr:       policy.Transport(nil),
		ctx:      ctx,
		cancel:   cancel,
		platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		flights:  map[string]*pullFlight{},
	}, nil
}

// close cancels the pulls in progress and waits for them to end.
func (s *imageStore) close() {
	s.cancel()
	s.pulls.Wait()
}

// parseRef parses an image reference and checks its registry against the
// policy; listed loopback registries are spoken to in plain HTTP. Errors
// name the image field.
func (s *imageStore) parseRef(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, sandbox.InvalidField("image", "%v", err)
	}
	if err := s.policy.Check(r); err != nil {
		return nil, sandbox.InvalidField("image", "%v", err)
	}
	if s.policy.Insecure(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(ref, name.Insecure); err != nil {
			return nil, sandbox.InvalidField("image", "%v", err)
		}
	}
	return r, nil
}

// authenticator is what a pull of r presents: the create's credentials,
// else the auth file's for its registry, else none. Errors name the field.
func (s *imageStore) authenticator(r name.Reference, auth *sandbox.RegistryAuth) (authn.Authenticator, error) {
	var creds *registry.Credentials
	if auth != nil {
		creds = &registry.Credentials{Username: auth.Username, Password: auth.Password,
			IdentityToken: auth.IdentityToken, RegistryToken: auth.RegistryToken}
	}
	a, err := registry.Authenticator(r.Context(), creds, s.authFile)
	if ce := (*registry.CredentialsError)(nil); errors.As(err, &ce) {
		return nil, sandbox.InvalidField("registry_auth."+ce.Field, "%s", ce.Reason)
	}
	return a, err
}

// get returns the unpacked image ref, pulling it if the cache lacks it;
// auth, when set, authenticates the pull. An image that took credentials
// to pull is served from the cache only to a create whose credentials
// the registry accepts for it too. progress, when set, is told how the
// layers' downloads go while get waits for a pull (see
// sandbox.StartRequest.Progress).
func (s *imageStore) get(ctx context.Context, ref string, auth *sandbox.RegistryAuth, progress func(sandbox.PullProgress)) (pulledImage, error) {
	r, err := s.parseRef(ref)
	if err != nil {
		return pulledImage{}, err
	}
	a, err := s.authenticator(r, auth)
	if err != nil {
		return pulledImage{}, err
	}
	var img pulledImage
	found := false
	if d, ok := r.(name.Digest); ok {
		img, found = s.cached(digestKey(d.DigestStr()))
	} else if key, err := os.ReadFile(s.refPath(r)); err == nil {
		img, found = s.cached(string(key))
	}
	if found {
		ok, err := s.mayUse(ctx, r, a, img)
		if err != nil {
			return pulledImage{}, err
		}
		if ok {
			return img, nil
		}
		// A private tag that has moved since: pulled afresh.
	}

	// Creates with the same credentials share a pull; others pull on
	// their own, so one's refusal is not another's.
	flight := r.Name() + "\x00" + credentialsKey(auth)
	s.mu.Lock()
	f, ok := s.flights[flight]
	if !ok {
		f = &pullFlight{done: make(chan struct{})}
		s.flights[flight] = f
		s.pulls.Add(1)
		go func() {
			defer s.pulls.Done()
			f.img, f.err = s.pull(r, a, f.tell)
			s.mu.Lock()
			delete(s.flights, flight)
			s.mu.Unlock()
			close(f.done)
		}()
	}
	w := f.watch(progress)
	s.mu.Unlock()
	defer f.unwatch(w)
	select {
	case <-f.done:
		return f.img, s.pullErr(f.err)
	case <-ctx.Done():
		return pulledImage{}, fmt.Errorf("pull %s: %w", ref, ctx.Err())
	}
}

// credentialsKey tells credentials apart without holding them: a hash.
func credentialsKey(a *sandbox.RegistryAuth) string {
	if a == nil {
		return ""
	}
	sum := sha256.Sum256([]byte(a.Username + "\x00" + a.Password + "\x00" + a.IdentityToken + "\x00" + a.RegistryToken))
	return hex.EncodeToString(sum[:])
}

// mayUse checks that a create with authenticator a may have img, an
// image in the cache: yes when it was pulled without credentials, else
// when the registry gives its manifest to a. It is false, with no error,
// when r (a tag) now names another image.
func (s *imageStore) mayUse(ctx context.Context, r name.Reference, a authn.Authenticator, img pulledImage) (bool, error) {
	if !img.Private {
		return true, nil
	}
	// The manifest itself, not a HEAD: its bytes are checked against
	// the digest, so a registry that merely claims to have the image (a
	// digest reference names any registry) gets nothing.
	desc, err := remote.Get(r, remote.WithContext(ctx), remote.WithAuth(a), remote.WithTransport(s.tr), remote.WithPlatform(s.platform))
	if err != nil {
		return false, s.pullErr(fmt.Errorf("%s was pulled with credentials, and the registry does not let these have it: %w", r.Name(), err))
	}
	key := filepath.Base(filepath.Dir(img.Rootfs))
	if digestKey(desc.Digest.String()) == key {
		return true, nil
	}
	// An index: the cached image is this platform's manifest in it.
	if idx, err := desc.ImageIndex(); err == nil {
		if m, err := idx.IndexManifest(); err == nil {
			for _, d := range m.Manifests {
				if d.Platform != nil && d.Platform.Satisfies(s.platform) && digestKey(d.Digest.String()) == key {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// pullErr makes a pull refused by the registry policy (a redirect or a
// name resolving to a refused address) a 400 naming the image.
func (s *imageStore) pullErr(err error) error {
	if err != nil && errors.Is(err, registry.ErrRefused) {
		return sandbox.InvalidField("image", "%v", err)
	}
	return err
}

// digestKey names a cache directory: "sha256-<hex>".
func digestKey(digest string) string { return strings.Replace(digest, ":", "-", 1) }

func (s *imageStore) refPath(r name.Reference) string {
	sum := sha256.Sum256([]byte(r.Name()))
	return filepath.Join(s.dir, "refs", hex.EncodeToString(sum[:]))
}

// cached returns the unpacked image of a digest key, if present.
func (s *imageStore) cached(key string) (pulledImage, bool) {
	if key == "" || strings.ContainsAny(key, "/\x00") || strings.HasPrefix(key, ".") {
		return pulledImage{}, false
	}
	dir := filepath.Join(s.dir, key)
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return pulledImage{}, false
	}
	var conf cachedConfig
	if err := json.Unmarshal(data, &conf); err != nil || conf.Version < cachedConfigVersion {
		return pulledImage{}, false
	}
	img := pulledImage{Rootfs: filepath.Join(dir, "rootfs"), Config: conf.imageConfig}
	if _, err := os.Lstat(filepath.Join(dir, privateMark)); err == nil {
		img.Private = true
	}
	return img, true
}

// pull fetches and unpacks an image: into a temporary directory, renamed
// into place once complete, so the cache never holds half an image. It
// tells progress how each layer's download goes.
func (s *imageStore) pull(r name.Reference, a authn.Authenticator, progress func(sandbox.PullProgress)) (pulledImage, error) {
	ctx := s.ctx
	log := s.log.With("image", r.Name())
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(s.platform), remote.WithAuth(a), remote.WithTransport(s.tr))
	if err != nil {
		return pulledImage{}, fmt.Errorf("pull %s: %w", r.Name(), err)
	}
	digest, err := img.Digest()
	if err != nil {
		return pulledImage{}, fmt.Errorf("pull %s: %w", r.Name(), err)
	}
	key := digestKey(digest.String())
	if cached, ok := s.cached(key); ok {
		return cached, s.writeRef(r, key)
	}
	cfgFile, err := img.ConfigFile()
	if err != nil {
		return pulledImage{}, fmt.Errorf("pull %s: config: %w", r.Name(), err)
	}
	c := cfgFile.Config
	conf := sandbox.NewImageConfig(c.Entrypoint, c.Cmd, c.Env, c.WorkingDir, c.User)
	if unpacked, ok, err := s.rewriteConfig(key, conf); err != nil || ok {
		if err != nil {
			return pulledImage{}, fmt.Errorf("pull %s: %w", r.Name(), err)
		}
		return unpacked, s.writeRef(r, key)
	}
	log.Info("pulling image", "digest", digest.String())
	tmp, err := os.MkdirTemp(s.dir, ".pull-")
	if err != nil {
		return pulledImage{}, err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return pulledImage{}, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return pulledImage{}, err
	}
	if err := s.unpack(img, rootfs, progress); err != nil {
		return pulledImage{}, fmt.Errorf("pull %s: unpack: %w", r.Name(), err)
	}
	if err := writeCachedConfig(tmp, conf); err != nil {
		return pulledImage{}, err
	}
	private := a != authn.Anonymous
	if private {
		if err := atomicfile.WriteFile(filepath.Join(tmp, privateMark), nil, 0o600); err != nil {
			return pulledImage{}, err
		}
	}
	final := filepath.Join(s.dir, key)
	if err := os.Rename(tmp, final); err != nil {
		if !errors.Is(err, fs.ErrExist) && !errors.Is(err, unix.ENOTEMPTY) {
			return pulledImage{}, fmt.Errorf("pull %s: %w", r.Name(), err)
		}
		// Another pull of the same digest (under another name) won.
	}
	if err := atomicfile.SyncDir(s.dir); err != nil {
		return pulledImage{}, err
	}
	log.Info("image unpacked", "digest", digest.String(), "dir", final)
	return pulledImage{Rootfs: filepath.Join(final, "rootfs"), Config: conf, Private: private}, s.writeRef(r, key)
}

// unpack extracts img's layers, flattened, into rootfs, telling progress
// how each layer's download goes.
func (s *imageStore) unpack(img v1.Image, rootfs string, progress func(sandbox.PullProgress)) error {
	pm := newPullMeter(progress)
	metered, err := pm.meter(img)
	if err != nil {
		return errors.Join(err, pm.close())
	}
	rc := mutate.Extract(metered)
	if err = extractTar(rc, rootfs); err != nil {
		pm.abandon()
		rc.Close()
		_ = pm.close() // its error is of what the failure cut short
		return err
	}
	rc.Close()
	return pm.close()
}

// writeCachedConfig writes an image's config.json into its cache
// directory dir.
func writeCachedConfig(dir string, conf imageConfig) error {
	data, err := json.Marshal(cachedConfig{imageConfig: conf, Version: cachedConfigVersion})
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, "config.json"), data, 0o644)
}

// rewriteConfig completes the config of an image an earlier agent
// unpacked (cached refused it, for its version): the layers stay, the
// config is written again whole. ok is false when the cache has no root
// of key: the image is to be unpacked.
func (s *imageStore) rewriteConfig(key string, conf imageConfig) (img pulledImage, ok bool, err error) {
	dir := filepath.Join(s.dir, key)
	if st, err := os.Lstat(filepath.Join(dir, "rootfs")); err != nil || !st.IsDir() {
		return pulledImage{}, false, nil
	}
	if err := writeCachedConfig(dir, conf); err != nil {
		return pulledImage{}, false, err
	}
	img, ok = s.cached(key)
	return img, ok, nil
}

func (s *imageStore) writeRef(r name.Reference, key string) error {
	if _, ok := r.(name.Digest); ok {
		return nil
	}
	return atomicfile.WriteFile(s.refPath(r), []byte(key), 0o600)
}
