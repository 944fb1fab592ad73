package oci

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"golang.org/x/sys/unix"
)

// TestInitMainExits: the init (this test binary run as `sandbox-init`,
// which TestMain sends to sandbox.InitMain) exits 0 on SIGTERM and on SIGINT.
func TestInitMainExits(t *testing.T) {
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			_, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			cmd := exec.Command(os.Args[0], initArg)
			cmd.Stdout = w
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// Signal it once it is ready: it moves its stdio to /dev/null
			// after it has asked for the signals.
			fd1 := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/fd/1"
			sandboxtest.WaitFor(t, "the init to be ready", func() bool { l, _ := os.Readlink(fd1); return l == os.DevNull })
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			err = <-done
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				t.Fatal(err)
			}
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("init exit code %d after %v, want 0 (%v)", code, sig, cmd.ProcessState)
			}
		})
	}
}
