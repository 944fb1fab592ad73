package sandbox

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// modelOutput is what an outputBuffer should hold: every byte written,
// with its stream, and the bound.
type modelOutput struct {
	data    []byte
	streams []byte // of each byte: streamByte's
	limit   int64
}

func (m *modelOutput) write(stream string, p []byte) {
	m.data = append(m.data, p...)
	m.streams = append(m.streams, bytes.Repeat([]byte{streamByte(stream)}, len(p))...)
}

// streamByte stands for a stream in modelOutput.streams.
func streamByte(stream string) byte { return stream[3] } // "stdout", "stderr"

func (m *modelOutput) first() int64 { return max(0, int64(len(m.data))-m.limit) }

// readAllFrom reads b from off to its end, through a small buffer so that
// reads are cut at the buffer's size and at the ring's wrap.
func readAllFrom(t *testing.T, b *outputBuffer, off int64, bufSize int) (data, streams []byte) {
	t.Helper()
	buf := make([]byte, bufSize)
	for {
		chunks, next, _, _, err := b.read(off, buf)
		if err != nil {
			t.Fatalf("read(%d): %v", off, err)
		}
		if len(chunks) == 0 {
			return data, streams
		}
		for i, c := range chunks {
			if c.Offset != off {
				t.Fatalf("chunk at %d, want %d", c.Offset, off)
			}
			if i > 0 && chunks[i-1].Stream == c.Stream && len(chunks[i-1].Data) < maxChunk {
				t.Fatalf("two chunks of %s in a row at %d, the first short", c.Stream, off)
			}
			data = append(data, c.Data...)
			streams = append(streams, bytes.Repeat([]byte{streamByte(c.Stream)}, len(c.Data))...)
			off += int64(len(c.Data))
		}
		if next != off {
			t.Fatalf("read returned next %d after chunks ending at %d", next, off)
		}
	}
}

// TestOutputBufferMatchesModel: random writes of both streams, of every
// size up to past the bound, read back from random offsets through small
// buffers: the bytes kept are the last limit written, each with its
// stream, in order, and older offsets are gone.
func TestOutputBufferMatchesModel(t *testing.T) {
	pattern := make([]byte, 64<<10)
	for i := range pattern {
		pattern[i] = byte(i % 251) // no period that divides a ring's size
	}
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 18))
		limit := int64(1 + rng.IntN(40<<10))
		b := newOutputBuffer(limit)
		m := &modelOutput{limit: limit}
		var n int
		for range 100 {
			stream := StreamStdout
			if rng.IntN(3) == 0 {
				stream = StreamStderr
			}
			p := make([]byte, rng.IntN(int(limit)*5/4+2))
			for k := 0; k < len(p); {
				c := copy(p[k:], pattern[n%len(pattern):])
				k += c
				n += c
			}
			b.write(stream, p)
			m.write(stream, p)

			first, end, _ := b.bounds()
			if want := m.first(); first != want || end != int64(len(m.data)) {
				t.Fatalf("seed %d: bounds [%d, %d), want [%d, %d)", seed, first, end, want, len(m.data))
			}
			if first > 0 {
				var gone *OutputGoneError
				if _, _, _, _, err := b.read(first-1, make([]byte, 16)); !errors.As(err, &gone) || gone.First != first {
					t.Fatalf("seed %d: read(%d) = %v, want gone from %d", seed, first-1, err, first)
				}
			}
			off := first + rng.Int64N(end-first+1)
			data, streams := readAllFrom(t, b, off, 512+rng.IntN(8<<10))
			if !bytes.Equal(data, m.data[off:]) {
				t.Fatalf("seed %d: bytes from %d differ from those written", seed, off)
			}
			if i := mismatch(streams, m.streams[off:]); i >= 0 {
				t.Fatalf("seed %d: byte %d read as of the wrong stream", seed, off+int64(i))
			}
		}
	}
}

// TestOutputBufferReadIsACopy: a reader's chunks are its own: writes that
// wrap the ring over the bytes it read leave them as they were.
func TestOutputBufferReadIsACopy(t *testing.T) {
	b := newOutputBuffer(8)
	b.write(StreamStdout, []byte("abcdefgh"))
	chunks, _, _, _, err := b.read(0, make([]byte, 8))
	if err != nil || len(chunks) != 1 {
		t.Fatalf("read = %v, %v", chunks, err)
	}
	b.write(StreamStdout, []byte("12345678"))
	if got := string(chunks[0].Data); got != "abcdefgh" {
		t.Fatalf("a read chunk changed to %q by a later write", got)
	}
}

// TestOutputBufferRelease: a released buffer keeps no bytes, and its
// offsets go on.
func TestOutputBufferRelease(t *testing.T) {
	b := newOutputBuffer(1 << 10)
	b.write(StreamStdout, []byte("hello"))
	b.release()
	b.write(StreamStderr, []byte("world"))
	first, end, _ := b.bounds()
	if first != 5 || end != 10 {
		t.Fatalf("bounds after release = [%d, %d), want [5, 10)", first, end)
	}
	data, streams := readAllFrom(t, b, 5, 64)
	if string(data) != "world" || streams[0] != streamByte(StreamStderr) {
		t.Fatalf("read after release = %q of %v", data, streams)
	}
}

// mismatch is the index of the first byte where a and b differ, or -1.
func mismatch(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
