package handlers

import (
	"errors"
	"net/http"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// resolveCmdOrAnswer gives a run without cmd the command of its sandbox's
// image (sandbox.Manager.ResolveCmd), answering the error itself; false
// when it has.
func resolveCmdOrAnswer(w http.ResponseWriter, m SandboxManager, id string, p sandbox.Process) (sandbox.Process, bool) {
	p, err := m.ResolveCmd(id, p)
	if err != nil {
		writeSandboxErr(w, err)
		return p, false
	}
	return p, true
}

// imageConfig is the config of sandbox id's image for its info; nil when
// it was not made from an image or its config is not read yet. Not knowing
// it (the backend could not read it) is logged, not an error: the rest of
// the sandbox's info stands.
func (a *API) imageConfig(r *http.Request, m SandboxManager, id string) *api.ImageConfig {
	cfg, err := m.ImageConfig(id)
	if err != nil && !errors.Is(err, sandbox.ErrNotFound) { // removed meanwhile
		a.log(r).Warn("read the image config of a sandbox", "sandbox", id, "err", err)
		return nil
	}
	if cfg == nil {
		return nil
	}
	return &api.ImageConfig{
		Entrypoint: nonNil(cfg.Entrypoint),
		Cmd:        nonNil(cfg.Cmd),
		Env:        cfg.EnvMap(),
		WorkingDir: cfg.WorkingDir,
		User:       cfg.User,
	}
}

// nonNil is s, or an empty list for nil: the contract's lists are never null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
