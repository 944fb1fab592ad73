package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// ErrUnknownService is returned (wrapped) for a service name that has no
// log: only "containerd" and "dockerd" have one.
var ErrUnknownService = errors.New("unknown service")

// MaxTailBytes bounds what Tail returns, however long the lines are.
const MaxTailBytes = 4 << 20

// followPoll is how often Follow looks for appended bytes.
const followPoll = 50 * time.Millisecond

// LogPath returns where the service's log is written.
func (r *Runtime) LogPath(service string) (string, error) {
	switch service {
	case Containerd, Dockerd:
		return r.logPath(service), nil
	}
	return "", fmt.Errorf("lifecycle: log of %q: %w (want %s or %s)", service, ErrUnknownService, Containerd, Dockerd)
}

// OpenLog opens the service's log ("containerd" or "dockerd") for reading.
// An unknown service is an error matching ErrUnknownService; a log that
// does not exist yet (the daemon never started) an error matching
// fs.ErrNotExist.
func (r *Runtime) OpenLog(service string) (*os.File, error) {
	path, err := r.LogPath(service)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lifecycle: %s has not logged yet (%s does not exist): %w", service, path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("lifecycle: open %s log: %w", service, err)
	}
	return f, nil
}

// LogTail returns the last n lines of the service's log, and the offset
// where they end (give it to Follow to go on from there).
func (r *Runtime) LogTail(service string, n int) ([]byte, int64, error) {
	f, err := r.OpenLog(service)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	return Tail(f, n)
}

// Tail returns the last n lines of f (a final line without a newline counts),
// at most MaxTailBytes of them, and f's size when it read them. n <= 0
// returns nothing; to send a whole log, copy f instead.
func Tail(f *os.File, n int) ([]byte, int64, error) {
	return tailFrom(f, 0, n)
}

// tailFrom is Tail limited to the bytes at or after offset from.
func tailFrom(f *os.File, from int64, n int) ([]byte, int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	end := fi.Size()
	if n <= 0 || end <= from {
		return nil, end, nil
	}
	// The last n lines start after the n-th newline from the end, not
	// counting one that ends the file.
	var last [1]byte
	if _, err := f.ReadAt(last[:], end-1); err != nil {
		return nil, end, err
	}
	need := n
	if last[0] == '\n' {
		need++
	}
	start := from
	const chunk = 32 << 10
	b := make([]byte, chunk)
scan:
	for pos := end; pos > from && end-pos < MaxTailBytes; {
		size := min(int64(chunk), pos-from)
		pos -= size
		if _, err := f.ReadAt(b[:size], pos); err != nil && !errors.Is(err, io.EOF) {
			return nil, end, err
		}
		for i := size - 1; i >= 0; i-- {
			if b[i] == '\n' {
				need--
				if need == 0 {
					start = pos + i + 1
					break scan
				}
			}
		}
	}
	start = max(start, end-MaxTailBytes)
	out := make([]byte, end-start)
	if _, err := f.ReadAt(out, start); err != nil && !errors.Is(err, io.EOF) {
		return nil, end, err
	}
	return out, end, nil
}

// Follow writes to w what is appended to the service's log from offset
// from on, as it is appended, until ctx ends (it then returns nil) or a
// write fails. Each chunk is written as read: wrap w to flush it. A log
// that shrinks (truncated) is followed again from its start.
func (r *Runtime) Follow(ctx context.Context, service string, w io.Writer, from int64) error {
	f, err := r.OpenLog(service)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 32<<10)
	t := time.NewTicker(followPoll)
	defer t.Stop()
	for {
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("lifecycle: follow %s log: %w", service, err)
		}
		if fi.Size() < from {
			from = 0
		}
		for from < fi.Size() {
			n, err := f.ReadAt(buf, from)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return werr
				}
				from += int64(n)
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("lifecycle: follow %s log: %w", service, err)
			}
			if ctx.Err() != nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
