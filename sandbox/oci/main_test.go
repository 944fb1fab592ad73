package oci

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// idPoolStart is the first host id of the user namespace ranges the
// Manager hands out (sandbox.IDMap): 2^30.
const idPoolStart = 1 << 30

// Set by TestMain for the privileged tests, inside RunIsolated's namespaces.
var (
	testInitPath     string // a static build of the sandbox init
	testRootfs       string // a busybox root filesystem
	testCgroupParent = fmt.Sprintf("arcbox-test-%d", os.Getpid())
	testSetupErr     error // why the privileged setup failed
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == initArg {
		sandbox.InitMain()
	}
	if slices.ContainsFunc(os.Args, func(a string) bool { return strings.HasPrefix(a, "-test.fuzzworker") }) {
		// A fuzzing worker runs fuzz targets only, which need neither
		// root nor the init and root filesystem the setup builds.
		os.Exit(m.Run())
	}
	if os.Getenv("ARCBOX_TEST_ISOLATED") == "1" && os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "sandbox-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		testSetupErr = privilegedSetup(dir)
		code := testenv.RunIsolated(m)
		removeTestCgroups(testCgroupParent)
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(testenv.RunIsolated(m))
}
