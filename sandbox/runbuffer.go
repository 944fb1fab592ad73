package sandbox

// A run's kept output: one bounded, ordered sequence of chunks of stdout
// and stderr, readable from any byte offset still kept.

import (
	"fmt"
	"slices"
	"sort"
	"sync"
)

// DefaultRunOutputBytes is how much of a run's output is kept when
// Config.RunOutputBytes does not say: 8 MiB.
const DefaultRunOutputBytes = 8 << 20

// maxChunk bounds how many bytes one chunk read from the buffer holds,
// as the live output's reads are bounded (outBufSize).
const maxChunk = outBufSize

// minRing is the smallest ring a run's kept output starts with: small
// output costs little, and the ring doubles up to the bound as more comes.
const minRing = 4 << 10

// OutputChunk is a piece of a run's kept output. Offsets count the bytes
// of stdout and stderr together, in the order they were read: one offset
// space for both, so that one number says where a reader is and a reader
// that resumes from it gets both streams, interleaved as they came. (Two
// offset spaces would need two numbers to resume and would lose the order
// between the streams.)
type OutputChunk struct {
	Stream string // StreamStdout or StreamStderr
	Offset int64  // of Data's first byte
	// Data is the reader's copy, valid until the call it was passed to
	// returns (ReadRunOutput reuses it for the next chunks).
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
//
// The bytes are kept in a ring, which grows (doubling) up to limit and is
// then written over: output at memory speed costs one copy into memory
// already in use, where a fresh allocation for each chunk cost a page
// fault for each of its pages and the garbage collector's work. Readers
// get copies (read), so a write never changes bytes a reader holds.
type outputBuffer struct {
	mu    sync.Mutex
	limit int64
	// ring holds the bytes kept, [first, end): offset o at o % len(ring).
	ring []byte
	// segs are where each stretch of one stream begins, in order; the
	// first may begin before first (its bytes before first are gone).
	segs   []outputSeg
	first  int64    // the first offset kept
	end    int64    // the offset of the next byte
	closed bool     // the run's output is complete
	cut    []string // the streams cut after the process exited
	// wake is closed and replaced when bytes are added or the buffer is
	// closed, waking the readers that follow.
	wake chan struct{}
}

// outputSeg is where a stretch of one stream begins in the output.
type outputSeg struct {
	stream string
	offset int64
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
		b.first = b.end
		b.segs = b.segs[:0]
	}
	if n := len(b.segs); n == 0 || b.segs[n-1].stream != stream {
		b.segs = append(b.segs, outputSeg{stream: stream, offset: b.end})
	}
	b.reserve(b.end - b.first + int64(len(p)))
	ringCopyIn(b.ring, b.end, p)
	b.end += int64(len(p))
	b.first = max(b.first, b.end-int64(len(b.ring)))
	b.trimSegs()
	close(b.wake)
	b.wake = make(chan struct{})
}

// reserve grows the ring, within limit, to hold need bytes when it can.
func (b *outputBuffer) reserve(need int64) {
	size := int64(len(b.ring))
	if need <= size || size >= b.limit {
		return
	}
	size = min(b.limit, max(need, 2*size, minRing))
	ring := make([]byte, size)
	for o := b.first; o < b.end; {
		piece := ringPiece(b.ring, o, b.end-o)
		ringCopyIn(ring, o, piece)
		o += int64(len(piece))
	}
	b.ring = ring
}

// trimSegs drops the stretches wholly before first.
func (b *outputBuffer) trimSegs() {
	i := 0
	for i+1 < len(b.segs) && b.segs[i+1].offset <= b.first {
		i++
	}
	if i > 0 {
		b.segs = b.segs[i:]
	}
}

// ringPiece is the longest contiguous piece of ring from offset o, at
// most n bytes.
func ringPiece(ring []byte, o, n int64) []byte {
	pos := o % int64(len(ring))
	return ring[pos:min(int64(len(ring)), pos+n)]
}

// ringCopyIn writes p at offset o of ring, wrapping; p fits the ring.
func ringCopyIn(ring []byte, o int64, p []byte) {
	pos := o % int64(len(ring))
	n := copy(ring[pos:], p)
	copy(ring, p[n:])
}

// release drops every byte kept (a finished run's output, past the
// sandbox's bound on finished runs' output); offsets go on.
func (b *outputBuffer) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ring, b.segs = nil, nil
	b.first = b.end
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

// read copies the kept output from off on into buf (cut into chunks at
// each change of stream, and of at most maxChunk bytes), as much as fits,
// and returns the chunks (their Data in buf), the offset after them, a
// channel closed when there is more to read, and whether the output is
// complete. An offset no longer kept is an *OutputGoneError.
func (b *outputBuffer) read(off int64, buf []byte) (chunks []OutputChunk, next int64, more <-chan struct{}, closed bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off < b.first {
		return nil, off, nil, b.closed, &OutputGoneError{Offset: off, First: b.first}
	}
	off = min(off, b.end)
	// From the stream change off is in: the last at or before it.
	start := max(sort.Search(len(b.segs), func(i int) bool { return b.segs[i].offset > off })-1, 0)
	for i := start; i < len(b.segs); i++ {
		seg := b.segs[i]
		segEnd := b.end
		if i+1 < len(b.segs) {
			segEnd = b.segs[i+1].offset
		}
		for off < segEnd && len(buf) > 0 {
			n := copyOut(b.ring, off, buf[:min(int64(len(buf)), segEnd-off, maxChunk)])
			chunks = append(chunks, OutputChunk{Stream: seg.stream, Offset: off, Data: buf[:n:n]})
			buf = buf[n:]
			off += int64(n)
		}
	}
	return chunks, off, b.wake, b.closed, nil
}

// copyOut copies the bytes of ring from offset o into dst, wrapping, and
// returns len(dst).
func copyOut(ring []byte, o int64, dst []byte) int {
	pos := o % int64(len(ring))
	n := copy(dst, ring[pos:])
	copy(dst[n:], ring)
	return len(dst)
}
