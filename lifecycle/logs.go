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

// followPoll is how often a followed log is looked at for appended bytes.
const followPoll = 50 * time.Millisecond

// LogPath returns where the service's log is written.
func (r *Runtime) LogPath(service string) (string, error) {
	switch service {
	case Containerd, Dockerd:
		return r.logPath(service), nil
	}
	return "", fmt.Errorf("lifecycle: log of %q: %w (want %s or %s)", service, ErrUnknownService, Containerd, Dockerd)
}

// LogOptions says which part of a log OpenLog streams.
type LogOptions struct {
	// Tail, when above 0, starts the stream at the log's last Tail lines
	// (at most MaxTailBytes of them) rather than at its start.
	Tail int
	// Follow keeps the stream open at the log's end: it yields what is
	// appended, as it is appended, until the context ends. A log that
	// shrinks (truncated in place) is followed again from its start.
	Follow bool
}

// OpenLog opens the service's log ("containerd" or "dockerd") as a stream
// to copy: all of it or its tail, then, when it follows, what is appended
// until ctx ends. The stream then ends with io.EOF; a failure to read the
// log is an error of its Read. An unknown service is an error matching
// ErrUnknownService; a log that does not exist yet (the daemon never
// started) an error matching fs.ErrNotExist.
func (r *Runtime) OpenLog(ctx context.Context, service string, opt LogOptions) (io.ReadCloser, error) {
	f, err := r.openLog(service)
	if err != nil {
		return nil, err
	}
	return &logStream{ctx: ctx, f: f, service: service, opt: opt}, nil
}

func (r *Runtime) openLog(service string) (*os.File, error) {
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

// logStream is what OpenLog returns. The tail is found on the first Read,
// so that OpenLog answers at once and a failure to read the log comes
// after the caller has taken the stream.
type logStream struct {
	ctx     context.Context
	f       *os.File
	service string
	opt     LogOptions
	began   bool
	tail    []byte // the tail's bytes not yet read
	off     int64  // where the next read of f starts
}

func (s *logStream) Read(p []byte) (int, error) {
	if !s.began {
		s.began = true
		if s.opt.Tail > 0 {
			data, end, err := Tail(s.f, s.opt.Tail)
			if err != nil {
				return 0, fmt.Errorf("lifecycle: tail %s log: %w", s.service, err)
			}
			s.tail, s.off = data, end
		}
	}
	if len(s.tail) > 0 {
		n := copy(p, s.tail)
		s.tail = s.tail[n:]
		return n, nil
	}
	if !s.opt.Follow {
		if s.opt.Tail > 0 {
			return 0, io.EOF
		}
		return s.readAt(p)
	}
	for s.ctx.Err() == nil {
		n, err := s.readAt(p)
		if n > 0 || !errors.Is(err, io.EOF) {
			return n, err
		}
		if err := s.waitForMore(); err != nil {
			return 0, err
		}
	}
	return 0, io.EOF
}

// readAt reads f from s.off on; io.EOF at its end.
func (s *logStream) readAt(p []byte) (int, error) {
	n, err := s.f.ReadAt(p, s.off)
	s.off += int64(n)
	switch {
	case n > 0 && errors.Is(err, io.EOF):
		return n, nil // the next Read says it
	case err != nil && !errors.Is(err, io.EOF):
		return n, fmt.Errorf("lifecycle: read %s log: %w", s.service, err)
	}
	return n, err
}

// waitForMore waits, at the log's end, until the next look at it: at once
// when it was truncated (read again from its start), else after followPoll
// or when ctx ends.
func (s *logStream) waitForMore() error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("lifecycle: follow %s log: %w", s.service, err)
	}
	if fi.Size() < s.off {
		s.off = 0
		return nil
	}
	t := time.NewTimer(followPoll)
	defer t.Stop()
	select {
	case <-s.ctx.Done():
	case <-t.C:
	}
	return nil
}

func (s *logStream) Close() error { return s.f.Close() }

// Tail returns the last n lines of f (a final line without a newline counts),
// at most MaxTailBytes of them, and f's size when it read them (where what
// is appended begins). n <= 0 returns nothing.
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
