package pid1

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Run reaps orphans whenever a child exits, until ctx ends.
func (r *Reaper) Run(ctx context.Context) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGCHLD)
	defer signal.Stop(ch)
	// Zombies within the grace are looked at again once it has passed.
	var retry <-chan time.Time
	scan := func() {
		r.ReapOrphans()
		retry = nil
		if r.Pending() {
			retry = time.After(r.grace)
		}
	}
	scan()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			scan()
		case <-retry:
			scan()
		}
	}
}

// BecomeSubreaper makes orphans of this process's descendants its children,
// as they are init's: how the reaper is tested without being PID 1.
func BecomeSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

type sysProc struct{}

// children lists this process's children from every thread's children
// file: orphans are reparented to some thread of the init process.
func (sysProc) children() ([]int, error) {
	files, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // the thread exited
		}
		pids = append(pids, parseChildren(data)...)
	}
	return pids, nil
}

func (sysProc) stat(pid int) (byte, uint64, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	state, start, err := parseStat(data)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	return state, start, nil
}

func (sysProc) reap(pid int) (bool, error) {
	var ws unix.WaitStatus
	got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	return got == pid, err
}
