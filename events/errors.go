package events

import (
	"errors"
	"fmt"
)

// ErrClosed is returned once the journal is closed (by Subscribe, and by
// Next, even with events left unread), and by Next after the subscription's
// own Close.
var ErrClosed = errors.New("the event journal is closed")

// ExpiredError is Subscribe's answer when events after After are no longer
// kept: the journal's oldest event is Oldest and After+1 < Oldest.
// Subscribing again with After = Oldest-1 accepts the gap.
type ExpiredError struct {
	After  uint64
	Oldest uint64
}

func (e *ExpiredError) Error() string {
	return fmt.Sprintf("events after seq %d are no longer kept: the oldest kept is seq %d", e.After, e.Oldest)
}

// FutureError is Subscribe's answer when After is past Last, the newest seq
// the journal ever assigned: a made-up value, or one from before the
// journal was reset (its directory lost, say a state dir on tmpfs after a
// reboot).
type FutureError struct {
	After uint64
	Last  uint64
}

func (e *FutureError) Error() string {
	return fmt.Sprintf("seq %d is past the newest event, seq %d: it was never assigned, or the journal was reset since", e.After, e.Last)
}

// FellBehindError ends a subscription whose next event left the journal
// before it was read: the subscriber fell more than the journal's size
// behind. Events from seq Next were not all delivered (those before Oldest
// are gone); a new subscription after Next-1 gets an ExpiredError naming
// the gap, and one after Oldest-1 resumes with what is kept.
type FellBehindError struct {
	Next   uint64
	Oldest uint64
}

func (e *FellBehindError) Error() string {
	return fmt.Sprintf("the subscriber fell more than the journal's size behind: events from seq %d on left the journal before it read them; the oldest kept is seq %d", e.Next, e.Oldest)
}
