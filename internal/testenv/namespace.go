package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

const isolatedEnv = "ARCBOX_TEST_ISOLATED"

// RunIsolated is for TestMain of packages whose privileged tests mount
// filesystems or start daemons that open sockets. As root it runs the test
// binary again in new mount and network namespaces (mounts private, only a
// loopback interface, brought up), so nothing a test mounts outlives it and
// no packet can leave the machine. Without root, or once inside, it runs the
// tests in place.
func RunIsolated(m *testing.M) int {
	if os.Getenv(isolatedEnv) == "1" || os.Geteuid() != 0 {
		return m.Run()
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		if InCI() {
			fmt.Fprintln(os.Stderr, "testenv: CI=true and unshare is missing:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "testenv: unshare missing; privileged tests will skip:", err)
		return m.Run()
	}
	script := `ip link set lo up 2>/dev/null || busybox ip link set lo up 2>/dev/null || true; exec "$@"`
	args := append([]string{"--mount", "--propagation", "private", "--net", "--",
		"sh", "-c", script, "sh", os.Args[0]}, os.Args[1:]...)
	cmd := exec.Command(unshare, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), isolatedEnv+"=1")
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "testenv: run isolated:", err)
		return 1
	}
	return 0
}

// RequireIsolated stops a privileged test that would otherwise touch the
// machine's own mounts or network: it must run inside RunIsolated's namespaces.
func RequireIsolated(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if os.Getenv(isolatedEnv) != "1" {
		SkipOrFail(t, "test must run inside testenv.RunIsolated (call it from TestMain)")
	}
}
