package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestOCIRuntimeFallsBackToTheRuntimeDir: a VM image ships runc only in the
// runtime directory, for containerd; sandboxes use it from there.
func TestOCIRuntimeFallsBackToTheRuntimeDir(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PATH", t.TempDir()) // neither crun nor runc on PATH
	cfg := &config{RuntimeBinDir: dir}
	if got := ociRuntime(cfg); got != "" {
		t.Errorf("empty runtime dir: %q, want the sandbox package's own choice", got)
	}
	runc := filepath.Join(dir, "runc")
	if err := os.WriteFile(runc, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := ociRuntime(cfg); got != runc {
		t.Errorf("got %q, want %q", got, runc)
	}
	cfg.OCIRuntime = "crun"
	if got := ociRuntime(cfg); got != "crun" {
		t.Errorf("configured: got %q, want crun", got)
	}
}
