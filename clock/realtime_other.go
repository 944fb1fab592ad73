//go:build !linux

package clock

import (
	"errors"
	"time"
)

// SetRealtime is only supported on Linux.
func SetRealtime(time.Time) error {
	return errors.New("setting the realtime clock is only supported on Linux")
}
