package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"
)

// imageConfig is what a sandbox takes from its image's config: the
// defaults of its processes. The image's entrypoint and cmd are not run:
// the sandbox's init is the agent's.
type imageConfig struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// pulledImage is an unpacked image in the cache.
type pulledImage struct {
	Rootfs string // the flattened root filesystem, used read-only
	Config imageConfig
}

// imageStore pulls images and keeps them unpacked, one directory per
// manifest digest under dir. A tag is resolved once and then served from
// the cache (like `docker run` with an image present); concurrent pulls of
// one reference are done once.
type imageStore struct {
	dir      string
	log      *slog.Logger
	ctx      context.Context // pulls outlive the creates that wait on them
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
}

func newImageStore(ctx context.Context, dir string, log *slog.Logger) (*imageStore, error) {
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

// parseImageRef parses an image reference. Registries on loopback are
// spoken to in plain HTTP.
func parseImageRef(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	if isLoopbackRegistry(r.Context().RegistryStr()) {
		return name.ParseReference(ref, name.Insecure)
	}
	return r, nil
}

func isLoopbackRegistry(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// get returns the unpacked image ref, pulling it if the cache lacks it;
// auth, when set, authenticates the pull.
func (s *imageStore) get(ctx context.Context, ref string, auth *RegistryAuth) (pulledImage, error) {
	r, err := parseImageRef(ref)
	if err != nil {
		return pulledImage{}, invalidField("image", "%v", err)
	}
	if d, ok := r.(name.Digest); ok {
		if img, ok := s.cached(digestKey(d.DigestStr())); ok {
			return img, nil
		}
	} else if key, err := os.ReadFile(s.refPath(r)); err == nil {
		if img, ok := s.cached(string(key)); ok {
			return img, nil
		}
	}

	s.mu.Lock()
	f, ok := s.flights[r.Name()]
	if !ok {
		f = &pullFlight{done: make(chan struct{})}
		s.flights[r.Name()] = f
		s.pulls.Add(1)
		go func() {
			defer s.pulls.Done()
			f.img, f.err = s.pull(r, auth)
			s.mu.Lock()
			delete(s.flights, r.Name())
			s.mu.Unlock()
			close(f.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-f.done:
		return f.img, f.err
	case <-ctx.Done():
		return pulledImage{}, fmt.Errorf("pull %s: %w", ref, ctx.Err())
	}
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
	img := pulledImage{Rootfs: filepath.Join(dir, "rootfs")}
	if err := json.Unmarshal(data, &img.Config); err != nil {
		return pulledImage{}, false
	}
	return img, true
}

// pull fetches and unpacks an image: into a temporary directory, renamed
// into place once complete, so the cache never holds half an image.
func (s *imageStore) pull(r name.Reference, auth *RegistryAuth) (pulledImage, error) {
	ctx := s.ctx
	log := s.log.With("image", r.Name())
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(s.platform))
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
	rc := mutate.Extract(img)
	err = extractTar(rc, rootfs)
	rc.Close()
	if err != nil {
		return pulledImage{}, fmt.Errorf("pull %s: unpack: %w", r.Name(), err)
	}
	conf := imageConfig{
		Env:        cfgFile.Config.Env,
		WorkingDir: cfgFile.Config.WorkingDir,
		User:       cfgFile.Config.User,
	}
	data, err := json.Marshal(conf)
	if err != nil {
		return pulledImage{}, err
	}
	if err := writeFileAtomic(filepath.Join(tmp, "config.json"), data, 0o644); err != nil {
		return pulledImage{}, err
	}
	final := filepath.Join(s.dir, key)
	if err := os.Rename(tmp, final); err != nil {
		if !errors.Is(err, fs.ErrExist) && !errors.Is(err, unix.ENOTEMPTY) {
			return pulledImage{}, fmt.Errorf("pull %s: %w", r.Name(), err)
		}
		// Another pull of the same digest (under another name) won.
	}
	if err := syncDir(s.dir); err != nil {
		return pulledImage{}, err
	}
	log.Info("image unpacked", "digest", digest.String(), "dir", final)
	return pulledImage{Rootfs: filepath.Join(final, "rootfs"), Config: conf}, s.writeRef(r, key)
}

func (s *imageStore) writeRef(r name.Reference, key string) error {
	if _, ok := r.(name.Digest); ok {
		return nil
	}
	return writeFileAtomic(s.refPath(r), []byte(key), 0o600)
}
