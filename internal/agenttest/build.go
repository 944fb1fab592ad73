//go:build linux

package agenttest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Version is the version stamped into the binary Build makes: the agent
// reports it in --version, GET /v1/ping and its metrics.
const Version = "v9.9.9-test"

// build is the agent binary of this test binary, made once.
var build struct {
	once sync.Once
	dir  string // holds the binary; RemoveBinary removes it
	bin  string
	err  error
	race bool
}

// Build builds the agent binary, once per test binary, and returns its
// path: static (CGO_ENABLED=0), since it is also a sandbox's init and a
// VM's PID 1, trimmed and stripped, and stamped with Version. With race,
// when this test binary has the race detector, the agent has it too, so
// that its own races fail the tests; the race detector wants cgo, so that
// build is not static. TestMain calls Build up front, so that no test pays
// for it (and before a test hides /run or /opt); whichever call comes
// first says whether the agent has the race detector.
func Build(race bool) (string, error) {
	build.once.Do(func() {
		build.race = race && raceEnabled
		build.bin, build.err = buildAgent(build.race)
	})
	return build.bin, build.err
}

// Binary returns the agent binary, building it (without the race
// detector) unless Build already did; a build that failed fails t.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := Build(false)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// RaceAgent reports whether the binary Build made has the race detector.
func RaceAgent() bool { return build.race }

// RemoveBinary removes what Build made. TestMain calls it once the tests
// have run (see Run).
func RemoveBinary() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

// Run is TestMain for a package that needs nothing else around its
// tests: it runs them, then removes the agent binary.
func Run(m *testing.M) int {
	defer RemoveBinary()
	return m.Run()
}

func buildAgent(race bool) (string, error) {
	dir, err := os.MkdirTemp("", "arcbox-agenttest-")
	if err != nil {
		return "", err
	}
	build.dir = dir
	// A sandbox's init is run by users of its own: the path must be
	// searchable.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "arcbox-agent")
	args := []string{"build", "-trimpath", "-ldflags", "-s -w -X main.version=" + Version, "-o", bin}
	cgo := "CGO_ENABLED=0"
	if race {
		args, cgo = append(args, "-race"), "CGO_ENABLED=1"
	}
	args = append(args, "github.com/arcbox/arcbox-agent/cmd/arcbox-agent")
	// No deadline of its own: on a loaded machine a race build can take
	// minutes, and go test's -timeout ends a build that hangs.
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), cgo)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s go %v: %w\n%s", cgo, args, err, out)
	}
	return bin, nil
}
