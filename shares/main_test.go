package shares

import (
	"os"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// TestMain runs the tests, as root, in private mount and network
// namespaces, so every mount a test makes vanishes with them.
func TestMain(m *testing.M) { os.Exit(testenv.RunIsolated(m)) }
