// Package sandbox checks the agent's sandboxes end to end: the agent's
// static binary runs as a process of its own, every path in a temporary
// directory, inside the mount and network namespaces testenv.RunIsolated
// made, and the tests drive it as the host would, through the generated
// client (every response checked against openapi.yaml) and a real
// WebSocket client, both over its unix socket. After each sandbox is
// removed the tests check that nothing of it is left on the machine.
//
// The benchmarks in bench_test.go measure the same paths against their
// peers (the bare OCI runtime, dockerd, qemu-guest-agent) in the same run.
package sandbox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// suite is what the tests share, set up by TestMain inside the namespaces.
var suite struct {
	dir string // everything the tests make lives under it
	// mountRoot is every agent's --sandbox-mount-root: the sources of the
	// tests' bind mounts are made under it (see mountDir).
	mountRoot string
	// dockerCgroupsBefore are dockerd's parent cgroups that existed
	// before the suite: those it made are removed at its end.
	dockerCgroupsBefore map[string]bool

	sharedMu sync.Mutex // held while the shared agent starts
	shared   *agentProc // the agent most tests use, started on first need
	sharedE  error

	mu     sync.Mutex
	agents []*agentProc // every agent started
	stops  []func()     // what the benchmarks started (dockerd, qemu-ga), stopped last
}

func TestMain(m *testing.M) {
	if os.Getenv("ARCBOX_TEST_ISOLATED") != "1" || os.Geteuid() != 0 {
		// As root: run again inside new namespaces, then come back
		// through the branch below. Else the tests skip (fail in CI).
		os.Exit(testenv.RunIsolated(m))
	}
	dir, err := os.MkdirTemp("", "arcbox-e2e-sandbox-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	suite.dir = dir
	// Sandbox roots are unprivileged users of this machine: the paths to
	// their mount sources and root filesystems must be searchable.
	suite.mountRoot = filepath.Join(dir, "mounts")
	err = os.Chmod(dir, 0o711)
	if err == nil {
		err = os.Mkdir(suite.mountRoot, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	suite.dockerCgroupsBefore = parentCgroups("docker")
	_, _ = agenttest.Build(false) // a failed build fails each test
	code := m.Run()
	err = shutdownSuite()
	agenttest.RemoveBinary()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/sandbox: cleanup:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// shutdownSuite removes what the tests left (there should be nothing),
// stops the agents and whatever the benchmarks started, and removes the
// temporary directory. It reports whatever it had to clean up.
func shutdownSuite() error {
	var problems []string
	suite.sharedMu.Lock()
	shared := suite.shared
	suite.sharedMu.Unlock()
	suite.mu.Lock()
	agents, stops := suite.agents, suite.stops
	suite.mu.Unlock()
	if shared != nil {
		if left := shared.RemoveSandboxes(); len(left) > 0 {
			problems = append(problems, fmt.Sprintf("sandboxes left by the tests, removed now: %v", left))
		}
	}
	for _, a := range agents {
		if !a.Running() {
			continue
		}
		if err := a.Stop(); err != nil {
			problems = append(problems, err.Error())
		}
	}
	// A safety net: containers the agents' runtime still knows (a test
	// that hung, say) are deleted with their processes.
	for _, a := range agents {
		if left := a.deleteContainers(); len(left) > 0 {
			problems = append(problems, fmt.Sprintf("containers of %s left, deleted now: %v", a.Dir, left))
		}
	}
	for _, stop := range slices.Backward(stops) {
		stop()
	}
	for d := range parentCgroups("docker") {
		// It is also the cgroup of any dockerd another test package runs
		// meanwhile (go test runs packages in parallel): one still in use
		// is not ours to report.
		if !suite.dockerCgroupsBefore[d] {
			_ = os.Remove(d)
		}
	}
	problems = append(problems, removeAgentCgroups(agents)...)
	// Nothing is removed while something is still mounted below dir.
	if left := agenttest.UnmountUnder(suite.dir); len(left) > 0 {
		problems = append(problems, fmt.Sprintf("could not unmount %v; leaving %s", left, suite.dir))
	} else if err := os.RemoveAll(suite.dir); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// removeAgentCgroups removes the parent cgroups of the agents' sandboxes,
// and reports each one that is not empty: a sandbox's cgroup left behind.
// Each agent has a parent of its own, named after its state dir
// (oci.DefaultCgroupParent), so the agents of other test packages running
// meanwhile (go test runs packages in parallel) are never looked at.
func removeAgentCgroups(agents []*agentProc) []string {
	var problems []string
	names := map[string]bool{}
	for _, a := range agents {
		names[a.cgroupParent()] = true // restarts of an agent share it
	}
	for name := range names {
		for d := range parentCgroups(name) {
			if err := os.Remove(d); err != nil {
				var left []string
				entries, _ := os.ReadDir(d)
				for _, e := range entries {
					if e.IsDir() {
						left = append(left, e.Name())
					}
				}
				problems = append(problems, fmt.Sprintf("cgroup %s left, holding %v: %v", d, left, err))
			}
		}
	}
	return problems
}

// parentCgroups lists the cgroups of these names, such as an agent's
// parent of its sandboxes' cgroups (agentProc.cgroupParent) and "docker"
// (dockerd's), at the root of each hierarchy and under this process's own
// cgroups, where runc makes the relative paths it is given.
func parentCgroups(names ...string) map[string]bool {
	var own []string
	if data, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if parts := strings.SplitN(line, ":", 3); len(parts) == 3 {
				own = append(own, parts[2])
			}
		}
	}
	mounts := []string{"/sys/fs/cgroup"}
	if all, err := filepath.Glob("/sys/fs/cgroup/*"); err == nil {
		for _, m := range all {
			if st, err := os.Stat(filepath.Join(m, "cgroup.procs")); err == nil && !st.IsDir() {
				mounts = append(mounts, m)
			}
		}
	}
	found := map[string]bool{}
	for _, m := range mounts {
		for _, base := range append([]string{"/"}, own...) {
			for _, name := range names {
				d := filepath.Join(m, base, name)
				if st, err := os.Stat(d); err == nil && st.IsDir() {
					found[d] = true
				}
			}
		}
	}
	return found
}

// requireSuite stops a test that cannot run here: it needs root, the
// namespaces of RunIsolated, busybox and an OCI runtime (skipped on a
// laptop, failed in CI), and an agent binary that built.
func requireSuite(t testing.TB) {
	t.Helper()
	testenv.RequireIsolated(t)
	testenv.RequireBinary(t, "busybox")
	if _, err := exec.LookPath("runc"); err != nil {
		testenv.RequireBinary(t, "crun")
	}
	agenttest.Binary(t)
}

// sharedAgent returns the agent most tests share, starting it once.
func sharedAgent(t testing.TB) *agentProc {
	t.Helper()
	requireSuite(t)
	suite.sharedMu.Lock()
	defer suite.sharedMu.Unlock()
	if suite.shared == nil && suite.sharedE == nil {
		suite.shared, suite.sharedE = startAgent(filepath.Join(suite.dir, "shared"))
	}
	if suite.sharedE != nil {
		t.Fatalf("start the agent: %v", suite.sharedE)
	}
	return suite.shared
}

// atSuiteEnd runs stop when the test binary is done, after the agents.
func atSuiteEnd(stop func()) {
	suite.mu.Lock()
	defer suite.mu.Unlock()
	suite.stops = append(suite.stops, stop)
}
