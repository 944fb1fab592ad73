package sandbox

import "fmt"

// transitions is the state machine: the states each state may move to.
// Anything else is refused, so a bug shows as an error, not a strange state.
var transitions = map[State][]State{
	StateStarting: {StateReady, StateStopping, StateFailed},
	StateReady:    {StateRunning, StateStopping, StateFailed},
	StateRunning:  {StateReady, StateStopping, StateFailed},
	StateStopping: {StateStopped, StateFailed},
	StateStopped:  nil,
	StateFailed:   nil,
}

// checkTransition says whether a sandbox may go from one state to another.
func checkTransition(from, to State) error {
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("state %s cannot become %s: %w", from, to, ErrConflict)
}

// live reports whether a sandbox in state s has (or is getting) a container.
func (s State) live() bool {
	return s == StateStarting || s == StateReady || s == StateRunning || s == StateStopping
}
