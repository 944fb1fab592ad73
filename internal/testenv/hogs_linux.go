package testenv

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// CPUHogs starts n busy loops (`sh -c 'while :; do :; done'`), one a core
// they can take, for a test that must hold on a loaded machine. They are
// ended by their PIDs when the test ends, and die with the test binary
// should it die first.
func CPUHogs(t testing.TB, n int) {
	t.Helper()
	sh := RequireBinary(t, "sh")
	for range n {
		cmd := exec.Command(sh, "-c", "while :; do :; done")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start a CPU hog: %v", err)
		}
		t.Cleanup(func() {
			if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				t.Errorf("kill CPU hog %d: %v", cmd.Process.Pid, err)
			}
			_ = cmd.Wait() // killed: its error says so
		})
	}
}
