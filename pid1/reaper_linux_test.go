package pid1

import (
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestReaperRealProcesses makes the test process a child subreaper, so
// orphans come to it as they come to init, and checks that an orphan is
// reaped while an owned child's exit status still reaches its Wait.
func TestReaperRealProcesses(t *testing.T) {
	if err := BecomeSubreaper(); err != nil {
		t.Fatalf("become subreaper: %v", err)
	}
	r := NewReaper(quiet)

	owned := exec.Command("sh", "-c", "exit 3")
	if err := r.Start(owned); err != nil {
		t.Fatal(err)
	}
	// The orphan outlives its parent, so it is ours and not reaped by that
	// shell (which may reap a child that ends before it does).
	out, err := exec.Command("sh", "-c", "sh -c 'sleep 0.3; exit 7' >/dev/null & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(10 * time.Second)
	reapedOrphan := false
	for !reapedOrphan && time.Now().Before(deadline) {
		for _, pid := range r.ReapOrphans() {
			if pid == orphan {
				reapedOrphan = true
			}
			if pid == owned.Process.Pid {
				t.Fatalf("reaped the owned child %d", pid)
			}
		}
		time.Sleep(time.Millisecond) // polling /proc: nothing to wait on
	}
	if !reapedOrphan {
		t.Fatalf("orphan %d was not reaped", orphan)
	}
	// Once the owned child is a zombie, a scan must leave it alone.
	for {
		state, _, err := sysProc{}.stat(owned.Process.Pid)
		if err != nil || state == 'Z' || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for _, pid := range r.ReapOrphans() {
		if pid == owned.Process.Pid {
			t.Fatalf("reaped the owned child %d", pid)
		}
	}
	err = owned.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("owned child's Wait = %v, want exit status 3", err)
	}
}
