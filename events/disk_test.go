package events

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzReadSegment feeds the segment reader torn and garbage content: it
// never fails or panics, cuts only after the last newline, and returns
// events in increasing seq order, each a valid event.
func FuzzReadSegment(f *testing.F) {
	f.Add([]byte("{\"seq\":1,\"action\":\"created\",\"timestamp\":5}\n{\"seq\":2,\"action\":\"ready\",\"timestamp\":6}\n"))
	f.Add([]byte("{\"seq\":1,\"action\":\"created\",\"timestamp\":5}\n{\"seq\":2,\"act"))
	f.Add([]byte("garbage\n{\"seq\":3,\"action\":\"x\",\"timestamp\":0}\n{\"seq\":2,\"action\":\"y\",\"timestamp\":0}\n"))
	f.Add([]byte("\n\n{}\n{\"seq\":1}\n\x00\xff"))
	f.Add(bytes.Repeat([]byte("a"), 70000))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := readSegment(bytes.NewReader(data), 0)
		if err != nil {
			t.Fatal(err)
		}
		if res.whole+int64(res.torn) != int64(len(data)) {
			t.Fatalf("whole %d + torn %d != %d bytes", res.whole, res.torn, len(data))
		}
		if res.whole > 0 && data[res.whole-1] != '\n' {
			t.Fatalf("whole lines end at %d, not after a newline", res.whole)
		}
		if bytes.IndexByte(data[res.whole:], '\n') >= 0 {
			t.Fatalf("the torn tail %q holds a newline", data[res.whole:])
		}
		lines := bytes.Count(data[:res.whole], []byte{'\n'})
		if len(res.events)+res.skipped != lines {
			t.Fatalf("%d events + %d skipped != %d lines", len(res.events), res.skipped, lines)
		}
		var last uint64
		for _, e := range res.events {
			if e.Seq <= last || e.Action == "" {
				t.Fatalf("event %+v after seq %d", e, last)
			}
			last = e.Seq
			line := encodeLine(&e)
			var back Event
			if err := json.Unmarshal(line, &back); err != nil || back.Seq != e.Seq {
				t.Fatalf("re-encoded %s: %v", line, err)
			}
		}
	})
}
