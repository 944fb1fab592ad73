package network

import (
	"os"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// The privileged tests make bridges, veths and namespaces: they run in
// network and mount namespaces of their own, never on the machine's network.
func TestMain(m *testing.M) { os.Exit(testenv.RunIsolated(m)) }
