package oci

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// TestOutputPipeIsGrown: the agent's output pipes hold pipeSize, so a
// fast writer fills one while the agent passes the last read on.
func TestOutputPipeIsGrown(t *testing.T) {
	testenv.RequireIsolated(t) // root: the size is past the unprivileged maximum on some kernels
	r, w, err := outputPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	size, err := unix.FcntlInt(w.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	if size != pipeSize {
		t.Fatalf("output pipe holds %d bytes, want %d", size, pipeSize)
	}
}

// TestOCIOutputWholeAndInOrder: a large output, written in 1 MiB writes
// (dd) and in 4 KiB writes (busybox head), reaches the output callback
// byte for byte and in order, through the grown pipes; and a detached
// run's kept output, read back by offset, is the same bytes.
func TestOCIOutputWholeAndInOrder(t *testing.T) {
	const size = 24 << 20
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(18, 1))
	for i := 0; i < len(data); i += 8 {
		v := rng.Uint64()
		for k := range 8 {
			data[i+k] = byte(v >> (8 * k))
		}
	}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			e := newOCIEnv(t, rt)
			root := e.rootfsDir("data")
			if err := EnsureBusyboxRootfs(root, testenv.RequireBinary(t, "busybox")); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, "data"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			id := e.create(sandbox.Spec{ID: "out-" + rt, Rootfs: root}).ID
			for _, cmd := range [][]string{
				{"dd", "if=/data", "bs=1048576", "status=none"},
				{"head", "-c", strconv.Itoa(size), "/data"},
				// Both streams at once: each whole and in order.
				{"sh", "-c", "dd if=/data bs=65536 status=none >&2 & head -c " + strconv.Itoa(size) + " /data; wait"},
			} {
				var l liveOut
				code, err := e.m.Run(context.Background(), id, sandbox.Process{Cmd: cmd}, l.out)
				if err != nil || code != 0 {
					t.Fatalf("%q = %d, %v (stderr %.200q)", cmd, code, err, l.Stderr())
				}
				if got := l.stdout.Bytes(); !bytes.Equal(got, data) {
					t.Errorf("%q: stdout of %d bytes differs from the %d of /data at byte %d", cmd, len(got), size, firstDiff(got, data))
				}
				if cmd[0] == "sh" && !bytes.Equal(l.stderr.Bytes(), data) {
					t.Errorf("%q: stderr of %d bytes differs from /data at byte %d", cmd, l.stderr.Len(), firstDiff(l.stderr.Bytes(), data))
				}
			}

			// The kept output: the last RunOutputBytes of it.
			info, err := e.m.StartRun(id, sandbox.RunRequest{Process: sandbox.Process{Cmd: []string{"head", "-c", strconv.Itoa(size), "/data"}}})
			if err != nil {
				t.Fatal(err)
			}
			// A reader that falls behind the bound starts again from the
			// first byte still kept; once the run has ended, none can.
			var kept []byte
			var first int64
			var end sandbox.RunInfo
			for try := 0; ; try++ {
				kept = nil
				end, err = e.m.ReadRunOutput(context.Background(), id, info.ID, first, true, func(cs []sandbox.OutputChunk) error {
					for _, c := range cs {
						if want := first + int64(len(kept)); c.Offset != want {
							t.Fatalf("chunk at offset %d, want %d", c.Offset, want)
						}
						kept = append(kept, c.Data...)
					}
					return nil
				})
				var gone *sandbox.OutputGoneError
				if !errors.As(err, &gone) || try == 1000 {
					break
				}
				first = gone.First
			}
			if err != nil || end.ExitCode == nil || *end.ExitCode != 0 {
				t.Fatalf("ReadRunOutput = %+v, %v", end, err)
			}
			if first < 0 || first+int64(len(kept)) != size || !bytes.Equal(kept, data[first:]) {
				t.Fatalf("kept output from %d, %d bytes: not the tail of /data", first, len(kept))
			}
		})
	}
}

// firstDiff is the index of the first byte where a and b differ.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
