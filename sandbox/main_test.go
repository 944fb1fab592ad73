package sandbox

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// TestMain runs the tests in their own mount namespace (as root), where
// TestRecordFullStateDir mounts its small tmpfs.
func TestMain(m *testing.M) {
	if slices.ContainsFunc(os.Args, func(a string) bool { return strings.HasPrefix(a, "-test.fuzzworker") }) {
		// A fuzzing worker runs fuzz targets only.
		os.Exit(m.Run())
	}
	os.Exit(testenv.RunIsolated(m))
}
