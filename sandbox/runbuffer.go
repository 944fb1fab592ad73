package sandbox

// A run's kept output: one bounded, ordered sequence of chunks of stdout
// and stderr, readable from any byte offset still kept.

import (
	"fmt"
	"slices"
	"sync"
)

// DefaultRunOutputBytes is how much of a run's output is kept when
// Config.RunOutputBytes does not say: 8 MiB.
const DefaultRunOutputBytes = 8 << 20

// maxChunk bounds how many bytes one kept chunk holds: output is merged
// into the last chunk while it is of the same stream and below this, so a
// process writing a byte at a time does not cost a chunk a byte.
const maxChunk = 64 << 10

// OutputChunk is a piece of a run's kept output. Offsets count the bytes
// of stdout and stderr together, in the order they were read: one offset
// space for both, so that one number says where a reader is and a reader
// that resumes from it gets both streams, interleaved as they came. (Two
// offset spaces would need two numbers to resume and would lose the order
// between the streams.)
type OutputChunk struct {
	Stream string // StreamStdout or StreamStderr
	Offset int64  // of Data's first byte
	// Data is shared with the buffer and must not be changed; it stays
	// valid (the buffer never writes over a byte it handed out).
	Data []byte
}

// OutputGoneError is a read of a run's output from an offset older than
// the first byte still kept: the bytes between were dropped to keep the
// run's output within its bound.
type OutputGoneError struct {
	Offset int64 // asked for
	First  int64 // the first offset still kept
}

func (e *OutputGoneError) Error() string {
	return fmt.Sprintf(`query parameter "offset": %d is older than the run's kept output, which begins at offset %d (the oldest bytes are dropped past the run's output bound); ask again from %d to accept the gap`, e.Offset, e.First, e.First)
}

// outputBuffer is a run's kept output. Writes never block on readers: past
// limit the oldest bytes are dropped. Safe for concurrent use.
type outputBuffer struct {
	mu     sync.Mutex
	limit  int64
	chunks []OutputChunk
	first  int64    // the first offset kept
	end    int64    // the offset of the next byte
	size   int64    // bytes kept: end - first
	closed bool     // the run's output is complete
	cut    []string // the streams cut after the process exited
	// wake is closed and replaced when bytes are added or the buffer is
	// closed, waking the readers that follow.
	wake chan struct{}
}

func newOutputBuffer(limit int64) *outputBuffer {
	return &outputBuffer{limit: limit, wake: make(chan struct{})}
}

// write appends a copy of p, of stream, dropping the oldest bytes past
// the bound.
func (b *outputBuffer) write(stream string, p []byte) {
	if len(p) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if int64(len(p)) > b.limit {
		// Only its tail can be kept.
		drop := int64(len(p)) - b.limit
		b.end += drop
		p = p[drop:]
		b.chunks = b.chunks[:0]
		b.first, b.size = b.end, 0
	}
	if n := len(b.chunks); n > 0 && b.chunks[n-1].Stream == stream && len(b.chunks[n-1].Data)+len(p) <= maxChunk {
		// Appending only writes past the bytes handed out, never over them.
		b.chunks[n-1].Data = append(b.chunks[n-1].Data, p...)
	} else {
		b.chunks = append(b.chunks, OutputChunk{Stream: stream, Offset: b.end, Data: append(make([]byte, 0, min(max(len(p), 4<<10), maxChunk)), p...)})
	}
	b.end += int64(len(p))
	b.size += int64(len(p))
	b.trim()
	close(b.wake)
	b.wake = make(chan struct{})
}

// trim drops the oldest bytes until the buffer is within its bound.
func (b *outputBuffer) trim() {
	for b.size > b.limit {
		excess := b.size - b.limit
		c := &b.chunks[0]
		if int64(len(c.Data)) <= excess {
			b.size -= int64(len(c.Data))
			b.chunks[0] = OutputChunk{}
			b.chunks = b.chunks[1:]
			continue
		}
		c.Data = c.Data[excess:]
		c.Offset += excess
		b.size -= excess
	}
	b.first = b.end - b.size
}

// release drops every byte kept (a finished run's output, past the
// sandbox's bound on finished runs' output); offsets go on.
func (b *outputBuffer) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.chunks = nil
	b.first, b.size = b.end, 0
}

// noteCut records that stream was cut (Output.Truncated).
func (b *outputBuffer) noteCut(stream string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !slices.Contains(b.cut, stream) {
		b.cut = append(b.cut, stream)
	}
}

// cutStreams are the streams cut after the process exited.
func (b *outputBuffer) cutStreams() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.cut)
}

// close marks the output complete and wakes the readers.
func (b *outputBuffer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.wake)
	}
}

// bounds are the kept offsets, [first, end), and whether the output is
// complete.
func (b *outputBuffer) bounds() (first, end int64, closed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.first, b.end, b.closed
}

// checkOffset says what is wrong with reading from off, if anything (see
// CheckOutputOffset).
func (b *outputBuffer) checkOffset(off int64) error {
	first, end, _ := b.bounds()
	return checkOutputOffset(first, end, off)
}

// CheckOutputOffset says what is wrong with reading a run's output from
// off, as ReadRunOutput would: a negative offset or one past the end is
// ErrInvalid, one older than the first kept an *OutputGoneError. (Kept
// offsets only grow: an offset it passes may be gone by the time it is
// read, never invalid.)
func CheckOutputOffset(info RunInfo, off int64) error {
	return checkOutputOffset(info.OutputFirst, info.OutputEnd, off)
}

func checkOutputOffset(first, end, off int64) error {
	switch {
	case off < 0:
		return InvalidField("offset", "%d is negative", off)
	case off > end:
		return InvalidField("offset", "%d is past the end of the run's output (%d bytes so far)", off, end)
	case off < first:
		return &OutputGoneError{Offset: off, First: first}
	}
	return nil
}

// read returns the kept chunks from off on (the first one cut to begin at
// off), the offset after them, a channel closed when there is more to
// read, and whether the output is complete. An offset no longer kept is an
// *OutputGoneError.
func (b *outputBuffer) read(off int64) (chunks []OutputChunk, next int64, more <-chan struct{}, closed bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off < b.first {
		return nil, off, nil, b.closed, &OutputGoneError{Offset: off, First: b.first}
	}
	for _, c := range b.chunks {
		cend := c.Offset + int64(len(c.Data))
		if cend <= off {
			continue
		}
		if c.Offset < off {
			c.Data = c.Data[off-c.Offset:]
			c.Offset = off
		}
		chunks = append(chunks, c)
	}
	return chunks, max(off, b.end), b.wake, b.closed, nil
}
