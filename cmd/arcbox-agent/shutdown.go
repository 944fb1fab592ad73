package main

import (
	"context"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/httpapi"
)

// What becomes of the machine when the agent stops as its init.
const (
	actionPowerOff = "poweroff"
	actionReboot   = "reboot"
)

// runtimeStopTimeout is what a signal's shutdown adds to --shutdown-timeout
// for the sandboxes and the daemons: dockerd and containerd get SIGTERM and
// their grace rather than an immediate SIGKILL.
const runtimeStopTimeout = 30 * time.Second

// haltOrder says how the agent stops.
type haltOrder struct {
	action string        // actionPowerOff or actionReboot
	grace  time.Duration // bounds the whole shutdown; each step gets what is left
	// system is a shutdown of the machine (asked through the API, or
	// SIGTERM to PID 1): the sandboxes are stopped rather than left running
	// for the next agent to adopt, and the data volume and the shares the
	// agent mounted are unmounted. Without it only the agent stops.
	system bool
	by     string // who asked, for the log
}

// requestShutdown is the API's shutdown: it records the order and returns
// the func that begins it, which the handler calls once its 202 is on the
// wire. One order at a time; a second is a conflict naming the first.
func (a *agent) requestShutdown(action string, grace time.Duration) (func(), error) {
	a.haltMu.Lock()
	defer a.haltMu.Unlock()
	switch {
	case a.halting != nil:
		return nil, httpapi.Errorf(httpapi.ErrConflict, "the agent is already shutting down (%s, asked by %s)", a.halting.action, a.halting.by)
	case a.ctx.Err() != nil:
		return nil, httpapi.Errorf(httpapi.ErrConflict, "the agent is already shutting down (asked by a signal)")
	}
	a.halting = &haltOrder{action: action, grace: grace, system: true, by: "the API"}
	return a.cancel, nil
}

// haltOrder is the order the agent stops by, once serve has returned: the
// API's, or else a signal's. As PID 1 a signal means the machine goes down;
// otherwise only the agent stops (an upgrade, say) and the sandboxes keep
// running for the next agent to adopt.
func (a *agent) haltOrder() haltOrder {
	a.haltMu.Lock()
	defer a.haltMu.Unlock()
	if a.halting == nil {
		a.halting = &haltOrder{action: actionPowerOff, grace: a.cfg.ShutdownTimeout + runtimeStopTimeout,
			system: a.isInit, by: "a signal"}
	}
	return *a.halting
}

// shutdown stops the agent, first what depends on the rest: the
// listeners, the requests in flight (for --shutdown-timeout at most), the
// Docker proxy, the sandboxes (a system shutdown stops them), the sandbox
// manager, the runtime's daemons, and last, for a system shutdown, the
// mounts: the data volume's and the shares the agent made. All within the
// order's grace.
func (a *agent) shutdown(o haltOrder) {
	began := time.Now()
	deadline := began.Add(o.grace)
	a.logger.Info("shutting down", "action", o.action, "grace", o.grace, "system", o.system, "asked_by", o.by)
	a.listeners.MarkClosed()
	requestsCtx, cancelRequests := context.WithDeadline(context.Background(), minTime(deadline, began.Add(a.cfg.ShutdownTimeout)))
	defer cancelRequests()
	if err := a.server.Shutdown(requestsCtx); err != nil {
		a.logger.Warn("requests still in flight at the deadline; closing them", "err", err)
		_ = a.server.Close()
	}
	a.stopProxy()
	a.proxyDone.Wait()

	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if o.system {
		if err := a.sandboxManager.stopAll(ctx); err != nil {
			a.logger.Warn("stop the sandboxes", "err", err)
		}
	}
	if err := a.sandboxManager.close(ctx); err != nil {
		a.logger.Warn("close the sandbox manager", "err", err)
	}
	if err := a.runtime.Shutdown(ctx); err != nil {
		a.logger.Warn("stop the runtime", "err", err)
	}
	if o.system {
		a.unmount()
	}
	a.logger.Info("stopped", "took", time.Since(began))
}

// unmount writes everything out and undoes the agent's mounts: the data
// volume's, then the shares'. What stays busy is named in the log; the
// kernel's own shutdown then deals with it.
func (a *agent) unmount() {
	unix.Sync()
	if done, err := a.volume.Unmount(); err != nil {
		a.logger.Warn("unmount the data volume", "unmounted", done, "err", err)
	}
	if err := a.unmountShares(); err != nil {
		a.logger.Warn("unmount the shares", "err", err)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
