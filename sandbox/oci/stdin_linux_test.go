package oci

import (
	"errors"
	"io"
	"os"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// TestCopyStdinPassesTheEndOnUnlessDetached: an input that ends closes the
// process's stdin, so it reads its end; one whose client detached
// (sandbox.ErrStdinDetached) leaves it open, so a run that outlives its
// client is not told its input ended.
func TestCopyStdinPassesTheEndOnUnlessDetached(t *testing.T) {
	for _, tc := range []struct {
		end    error
		closed bool
	}{
		{io.EOF, true},
		{errors.New("the client went away"), true},
		{sandbox.ErrStdinDetached, false},
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		in, feed := io.Pipe()
		e := &process{stdinW: w}
		done := make(chan struct{})
		go func() { e.copyStdin(in); close(done) }()
		if _, err := feed.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		_ = feed.CloseWithError(tc.end)
		<-done
		buf := make([]byte, 2)
		if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "hi" {
			t.Fatalf("%v: the process read %q, %v; want hi", tc.end, buf, err)
		}
		// Closed: the process reads its end. Open: a write still goes in.
		_, werr := w.Write([]byte("x"))
		if closed := werr != nil; closed != tc.closed {
			t.Errorf("end %v: stdin closed %v, want %v", tc.end, closed, tc.closed)
		}
		r.Close()
		w.Close()
	}
}
