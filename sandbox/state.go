package sandbox

import "github.com/arcbox/arcbox-agent/events"

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
	return Errorf(ErrConflict, "state %s cannot become %s", from, to)
}

// live reports whether a sandbox in state s has (or is getting) a container.
func (s State) live() bool {
	return s == StateStarting || s == StateReady || s == StateRunning || s == StateStopping
}

// transitionLocked moves sb to state `to`, counts it, and publishes the event
// named after the new state (or action, when given); m.mu is held. An
// invalid transition is a bug: it is logged and refused.
func (m *Manager) transitionLocked(sb *sandbox, to State, attrs map[string]string, action ...string) bool {
	from := sb.rec.State
	if err := checkTransition(from, to); err != nil {
		m.log.Error("refused state transition", "id", sb.id, "err", err)
		return false
	}
	sb.rec.State = to
	m.metrics.move(from, to)
	name := string(to)
	if len(action) > 0 {
		name = action[0]
	}
	m.publishLocked(sb, name, attrs)
	return true
}

// publishLocked sends an event about sb; m.mu is held, which keeps the events in
// the order of the transitions.
func (m *Manager) publishLocked(sb *sandbox, action string, attrs map[string]string) {
	m.events.Append(events.Event{SandboxID: sb.id, Action: action, Time: m.now(), Attributes: attrs})
}

// fail moves sb to failed with why, and records it.
func (m *Manager) fail(sb *sandbox, why string) {
	m.mu.Lock()
	sb.rec.Error = recordText(why)
	ok := m.transitionLocked(sb, StateFailed, map[string]string{"error": sb.rec.Error})
	m.mu.Unlock()
	if ok {
		m.persistLogged(sb)
	}
}
