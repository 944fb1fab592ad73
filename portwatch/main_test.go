package portwatch

import (
	"os"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// The privileged tests make network namespaces and bind mounts and listen
// on sockets: they run in network and mount namespaces of their own.
func TestMain(m *testing.M) { os.Exit(testenv.RunIsolated(m)) }
