package portwatch

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// testNetns is a fresh network namespace with a thread of its own inside
// it, to run code there: a socket made on that thread belongs to the
// namespace. It can be bind-mounted at a path, as sandbox/network does
// for a sandbox.
type testNetns struct {
	do    chan func()
	quit  chan struct{}
	bound []string
}

// newTestNetns makes a namespace and its thread; both end with the test
// (the namespace once nothing refers to it any more).
func newTestNetns(t testing.TB) *testNetns {
	t.Helper()
	n := &testNetns{do: make(chan func()), quit: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread ends with this goroutine, so no
		// other goroutine ever runs in the namespace.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for {
			select {
			case f := <-n.do:
				f()
			case <-n.quit:
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("unshare network namespace: %v", err)
	}
	t.Cleanup(func() {
		for _, p := range n.bound {
			if err := unbindNetns(p); err != nil {
				t.Errorf("remove network namespace %s: %v", p, err)
			}
		}
		close(n.quit)
	})
	return n
}

// run runs f inside the namespace and returns when it has.
func (n *testNetns) run(f func()) {
	done := make(chan struct{})
	n.do <- func() { f(); close(done) }
	<-done
}

// bind bind-mounts the namespace at path, creating the file if it is not
// there: what sandbox/network's Setup does.
func (n *testNetns) bind(t testing.TB, path string) {
	t.Helper()
	if f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	var err error
	n.run(func() { err = unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, "") })
	if err != nil {
		t.Fatalf("bind network namespace at %s: %v", path, err)
	}
	n.bound = append(n.bound, path)
}

// unbindNetns unmounts and removes a namespace file, as sandbox/network's
// Teardown does.
func unbindNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
