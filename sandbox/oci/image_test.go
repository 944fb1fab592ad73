package oci

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// TestCachedConfig: the cache keeps an image's whole config; a config an
// earlier agent wrote (without entrypoint and cmd) is not served, and is
// completed in place when the image's root is there.
func TestCachedConfig(t *testing.T) {
	s := &imageStore{dir: t.TempDir()}
	const key = "sha256-abc"
	dir := filepath.Join(s.dir, key)
	if err := os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := sandbox.NewImageConfig([]string{"/entry"}, []string{"serve"}, []string{"A=1"}, "/srv", "app")
	old := `{"env":["A=1"],"working_dir":"/srv","user":"app"}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.cached(key); ok {
		t.Fatal("a config without entrypoint and cmd is served from the cache")
	}
	img, ok, err := s.rewriteConfig(key, conf)
	if err != nil || !ok || !reflect.DeepEqual(img.Config, conf) || img.Rootfs != filepath.Join(dir, "rootfs") {
		t.Fatalf("rewriteConfig: %+v, %v, %v", img, ok, err)
	}
	if img, ok := s.cached(key); !ok || !reflect.DeepEqual(img.Config, conf) {
		t.Errorf("cached after the rewrite: %+v, %v", img, ok)
	}
	// No root: the image is to be unpacked, nothing is written.
	if _, ok, err := s.rewriteConfig("sha256-none", conf); ok || err != nil {
		t.Errorf("rewriteConfig without a root: %v, %v", ok, err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "sha256-none")); !os.IsNotExist(err) {
		t.Errorf("rewriteConfig without a root made its directory: %v", err)
	}
}
