//go:build race

package runtime

// raceEnabled: the test binary runs under the race detector, and so does
// the agent it builds.
const raceEnabled = true
