package main

import (
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/shares"
	"github.com/arcbox/arcbox-agent/startup"
)

// mountShares mounts the configured VirtioFS shares the VM has. Nothing
// here stops the agent: a missing tag is a debug line, a failed mount a
// warning (the shares package says which).
func (a *agent) mountShares(phases *startup.Phases) {
	if len(a.cfg.Shares) == 0 {
		return
	}
	began := time.Now()
	a.mounter = shares.NewMounter(a.logger)
	a.shares = a.mounter.MountAll(a.cfg.Shares)
	phases.Observe("shares", began)
	if len(a.shares) > 0 {
		paths := make([]string, len(a.shares))
		for i, sh := range a.shares {
			paths[i] = sh.Path
		}
		a.logger.Info("VirtioFS shares mounted", "paths", paths)
	}
}

// mountedShares is /v1/info's list of the shares.
func (a *agent) mountedShares() []api.Share {
	out := make([]api.Share, len(a.shares))
	for i, sh := range a.shares {
		out[i] = api.Share{Tag: sh.Tag, Path: sh.Path, Options: sh.Options, Dax: sh.DAX}
	}
	return out
}

// unmountShares unmounts the shares the agent mounted, last first.
func (a *agent) unmountShares() error {
	if a.mounter == nil {
		return nil
	}
	return a.mounter.Unmount(a.shares)
}
