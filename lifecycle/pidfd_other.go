//go:build !linux

package lifecycle

import (
	"context"
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// errNoPidfd: adopting a daemon needs pidfd_open(2), which only Linux has.
var errNoPidfd = errors.New("adopting a daemon needs Linux's pidfd")

// pidfd is Linux's handle on a process; elsewhere none can be opened.
type pidfd struct{ pid int }

func openPidfd(int) (*pidfd, error) { return nil, errNoPidfd }

func (p *pidfd) signal(unix.Signal) error { return os.ErrProcessDone }

func (p *pidfd) exited() bool { return true }

func (p *pidfd) wait() {}

func (p *pidfd) close() {}

func socketPeer(context.Context, string) (int, error) { return 0, errNoPidfd }
