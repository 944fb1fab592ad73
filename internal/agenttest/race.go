//go:build race

package agenttest

// raceEnabled: this test binary has the race detector, and so can the
// agent it builds.
const raceEnabled = true
