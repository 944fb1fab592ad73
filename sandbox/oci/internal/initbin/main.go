// Command initbin is a static sandbox init for the oci package's tests
// (the race-enabled test binary is dynamically linked, so it cannot be the
// init itself): built by TestMain with CGO_ENABLED=0.
package main

import "github.com/arcbox/arcbox-agent/sandbox/initproc"

func main() { initproc.Main() }
