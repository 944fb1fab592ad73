package sandbox

import "github.com/arcbox/arcbox-agent/sandbox/initproc"

// InitMain is a sandbox's process 1: the agent runs it for
// `arcbox-agent sandbox-init` (see Config.InitPath). It reaps the orphans
// that re-parent to it and exits 0 on SIGTERM or SIGINT, which ends every
// other process of the sandbox. It never returns.
func InitMain() { initproc.Main() }
