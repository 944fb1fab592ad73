package lifecycle

import (
	"context"
	"errors"
	"time"
)

// probeInterval is how often a wait for a socket tries to connect: a
// socket that comes up is noticed within about this long.
const probeInterval = 5 * time.Millisecond

var (
	errExited   = errors.New("exited")
	errNotReady = errors.New("not ready in time")
)

// waitSocket waits until service answers on the unix socket at path
// (Config.Probe). It
// returns errNotReady when timeout passes first, errExited as soon as
// exited (the daemon's exit channel; nil for none) is closed, or ctx's error.
func (r *Runtime) waitSocket(ctx context.Context, service, path string, timeout time.Duration, exited <-chan struct{}) error {
	deadline, stop := r.timer(service, waitReady, timeout)
	defer stop()
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		if r.cfg.Probe(ctx, service, path) == nil {
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return errNotReady
		case <-tick.C:
		}
	}
}
