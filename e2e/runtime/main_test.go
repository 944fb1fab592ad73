// Package runtime checks the container runtime as a user of the agent
// meets it: the agent binary runs as a process of its own, every path in a
// temporary directory, its data volume an image file the test made, inside
// the mount and network namespaces testenv.RunIsolated made. The test
// drives it as the host would: the control API through the generated
// client (every response checked against openapi.yaml) over the agent's
// unix socket, and the real docker CLI through the agent's Docker API
// proxy (a loopback TCP listener that wants the agent's bearer token, which
// the CLI sends from its config's HttpHeaders), pulling an image from a
// registry the test serves on loopback. It stops the agent with SIGTERM, checks what it
// left (processes, mounts, loop device, files outside its directories),
// and starts it again on the same volume, twice: once with the volume
// still mounted (an agent restart, stopped while a client stalls) and once
// after everything was unmounted (a VM reboot).
//
// What the packages' own tests cover is not repeated here: the ensure
// state machine and supervision (lifecycle), byte-level proxying
// (dockerproxy), signatures, formatting and snapshots (disk).
package runtime

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// suite is what TestMain prepares inside the namespaces.
var suite struct {
	dir   string        // everything the tests make lives under it
	built time.Duration // how long the agent's build took
}

func TestMain(m *testing.M) {
	if os.Getenv("ARCBOX_TEST_ISOLATED") != "1" || os.Geteuid() != 0 {
		// As root: run again inside new namespaces and come back through
		// the branch below. Else the tests skip (and fail when CI=true).
		os.Exit(testenv.RunIsolated(m))
	}
	// A short directory: unix socket paths must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "abrt-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	suite.dir = dir
	// The agent has the race detector when this test binary does, so that
	// its own races fail the test too. A failed build fails each test.
	began := time.Now()
	_, _ = agenttest.Build(true)
	suite.built = time.Since(began)
	code := m.Run()
	agenttest.RemoveBinary()
	// The test cleans up after itself; this is the net under it. Nothing
	// is removed while something is still mounted below dir.
	if left := agenttest.UnmountUnder(dir); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e/runtime: could not unmount %v; leaving %s\n", left, dir)
		os.Exit(1)
	}
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/runtime:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}
