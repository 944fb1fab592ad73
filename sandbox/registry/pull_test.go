package registry

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

const (
	testUser     = "puller"
	testPassword = "s3cret-Pa55word"
	testToken    = "tok-Bearer-0123456789"
)

// testRegistry is go-containerregistry's registry on loopback, holding one
// image: open serves it to anyone, authed only with testUser's password or
// testToken. When blobs is set, blob downloads are redirected to
// blobs+"/moved"+path, and a request for /moved/PATH is served PATH.
type testRegistry struct {
	open, authed *httptest.Server
	repo         string // the image's repository path, "test/img"
	blobs        atomic.Pointer[string]
	unauthorized atomic.Int32 // 401s answered by authed
}

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	r := &testRegistry{repo: "test/img"}
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	redirecting := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if rest, ok := strings.CutPrefix(req.URL.Path, "/moved"); ok {
			req.URL.Path = rest // where blobs are redirected to
		} else if to := r.blobs.Load(); to != nil && strings.Contains(req.URL.Path, "/blobs/sha256:") {
			http.Redirect(w, req, *to+"/moved"+req.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		h.ServeHTTP(w, req)
	})
	r.open = httptest.NewServer(redirecting)
	t.Cleanup(r.open.Close)
	r.authed = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		user, pass, basic := req.BasicAuth()
		allowed := basic && user == testUser && pass == testPassword || req.Header.Get("Authorization") == "Bearer "+testToken
		if !allowed {
			r.unauthorized.Add(1)
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		redirecting.ServeHTTP(w, req)
	}))
	t.Cleanup(r.authed.Close)

	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.host(r.open) + "/" + r.repo + ":v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push the test image: %v", err)
	}
	return r
}

func (r *testRegistry) host(s *httptest.Server) string {
	u, _ := url.Parse(s.URL)
	return u.Host
}

// pull pulls ref the way the image store is to: checked by name, plain
// HTTP only where the policy says, every connection through the policy's
// transport (over a guard that dials loopback only), and every blob read.
func pull(t *testing.T, p *Policy, ref string, auth authn.Authenticator) error {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatalf("parse %q: %v", ref, err)
	}
	if err := p.Check(r); err != nil {
		return err
	}
	if p.Insecure(r.Context().RegistryStr()) {
		if r, err = name.ParseReference(ref, name.Insecure); err != nil {
			t.Fatal(err)
		}
	}
	if auth == nil {
		auth = authn.Anonymous
	}
	g := &guard{t: t}
	img, err := remote.Image(r, remote.WithTransport(p.Transport(g.transport())), remote.WithAuth(auth),
		remote.WithContext(context.Background()))
	if err != nil {
		return err
	}
	if _, err := img.ConfigFile(); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func TestPullFromLoopbackRegistry(t *testing.T) {
	r := newTestRegistry(t)
	host := r.host(r.open)
	ref := host + "/" + r.repo + ":v1"

	if err := pull(t, mustPolicy(t, host), ref, nil); err != nil {
		t.Fatalf("pull from the listed registry: %v", err)
	}
	// localhost:PORT names the same server; listed as such, it is spoken
	// to as well (plain HTTP, dialled at the address it resolves to).
	local := strings.Replace(ref, "127.0.0.1", "localhost", 1)
	lp := mustPolicy(t, strings.Replace(host, "127.0.0.1", "localhost", 1)).WithResolver(fakeResolver{"localhost": {"127.0.0.1"}})
	if err := pull(t, lp, local, nil); err != nil {
		t.Fatalf("pull from the listed localhost registry: %v", err)
	}

	for _, tc := range []struct {
		name string
		p    *Policy
		ref  string
		want string
	}{
		{"unlisted, no allow-list", mustPolicy(t), ref, "loopback address, refused unless listed; add --registry " + host},
		{"unlisted, another listed", mustPolicy(t, "ghcr.io"), ref, "not in the allow-list"},
		// A name the policy allows that resolves to the machine itself:
		// refused at the connection (over https; plain HTTP earlier).
		{"a name resolving to loopback", mustPolicy(t).WithResolver(fakeResolver{"registry.test": {"127.0.0.1"}}),
			strings.Replace(ref, "127.0.0.1", "registry.test", 1), "registry.test resolves to 127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := pull(t, tc.p, tc.ref, nil)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("pull = %v, want a refusal saying %q", err, tc.want)
			}
		})
	}
}

// TestPullRedirectRefused pulls from a listed registry whose blobs redirect
// elsewhere on the machine: the manifest comes, the blobs are refused.
// (go-containerregistry refuses redirects to private and link-local IP
// literals itself; names resolving to them are the policy's to catch.)
func TestPullRedirectRefused(t *testing.T) {
	r := newTestRegistry(t)
	host := r.host(r.open)
	ref := host + "/" + r.repo + ":v1"
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("a refused redirect reached the unlisted server")
	}))
	defer other.Close()
	p := mustPolicy(t, host).WithResolver(fakeResolver{"blobs.test": {"127.0.0.1"}, "meta.test": {"169.254.169.254"}})
	for _, tc := range []struct {
		to     string
		policy bool // refused by the policy, not only by go-containerregistry
	}{
		{other.URL, true},
		{"https://" + r.host(other), true},
		{"https://blobs.test:" + strings.Split(r.host(other), ":")[1], true},
		{"https://meta.test", true},
		{"http://169.254.169.254", false},
		{"https://[fe80::1]:443", false},
	} {
		r.blobs.Store(&tc.to)
		err := pull(t, p, ref, nil)
		if err == nil || tc.policy && !errors.Is(err, ErrRefused) {
			t.Errorf("pull with blobs redirected to %s = %v, want a refusal", tc.to, err)
		}
	}
	// To the listed registry itself: followed.
	self := r.open.URL
	r.blobs.Store(&self)
	if err := pull(t, p, ref, nil); err != nil {
		t.Errorf("pull with blobs redirected to the listed registry: %v", err)
	}
}

func TestPullWithCredentials(t *testing.T) {
	r := newTestRegistry(t)
	host := r.host(r.authed)
	ref := host + "/" + r.repo + ":v1"
	p := mustPolicy(t, host)
	target, err := name.NewRepository(host + "/" + r.repo)
	if err != nil {
		t.Fatal(err)
	}
	file := writeAuthFile(t, `{"auths":{"`+host+`":{"auth":"`+b64(testUser+":"+testPassword)+`"}}}`)
	wrongFile := writeAuthFile(t, `{"auths":{"`+host+`":{"username":"`+testUser+`","password":"nope"}}}`)
	otherFile := writeAuthFile(t, `{"auths":{"ghcr.io":{"auth":"`+b64(testUser+":"+testPassword)+`"}}}`)

	for _, tc := range []struct {
		name   string
		create *Credentials
		file   *AuthFile
		ok     bool
	}{
		{"file", nil, file, true},
		{"per create, basic", &Credentials{Username: testUser, Password: testPassword}, nil, true},
		{"per create, registry token", &Credentials{RegistryToken: testToken}, nil, true},
		{"per create wins over the file", &Credentials{Username: testUser, Password: testPassword}, wrongFile, true},
		{"wrong per create, right file", &Credentials{Username: testUser, Password: "nope"}, file, false},
		{"none", nil, nil, false},
		{"the file has another registry's", nil, otherFile, false},
		{"wrong file", nil, wrongFile, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := r.unauthorized.Load()
			auth, err := Authenticator(target, tc.create, tc.file)
			if err != nil {
				t.Fatal(err)
			}
			err = pull(t, p, ref, auth)
			if tc.ok && err != nil {
				t.Fatalf("pull: %v", err)
			}
			if !tc.ok {
				if err == nil || errors.Is(err, ErrRefused) || r.unauthorized.Load() == before {
					t.Fatalf("pull = %v, want the registry's 401", err)
				}
				if strings.Contains(err.Error(), testPassword) || strings.Contains(err.Error(), "nope") {
					t.Fatalf("the pull's error holds a password: %v", err)
				}
			}
		})
	}
}
