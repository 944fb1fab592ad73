package clock

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// SetRealtime sets the machine's realtime clock (CAP_SYS_TIME).
func SetRealtime(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime(CLOCK_REALTIME, %s): %w", t.UTC().Format(time.RFC3339Nano), err)
	}
	return nil
}
