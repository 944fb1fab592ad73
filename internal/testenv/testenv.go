// Package testenv holds the gates and sandboxes that privileged tests share:
// a test that needs root or a system binary skips on a developer's laptop but
// fails under CI=true, and tests that change mounts or the network run in
// namespaces of their own.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI, where nothing may skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips the test on a developer's machine and fails it in CI,
// saying why: the gate of every Require.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("CI=true and %s", msg)
	}
	t.Skip(msg)
}

// RequireRoot stops a test that needs root when the process is not root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "test needs root")
	}
}

// RequireBinary returns the path of a system binary the test needs.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, "test needs %s on PATH: %v", name, err)
	}
	return p
}

// RequireFile stops a test that needs a file (a device, say) that is absent.
func RequireFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		SkipOrFail(t, "test needs %s: %v", path, err)
	}
}
