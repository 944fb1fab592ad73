package base64x

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"testing"
)

// checkEncode compares AppendEncode with encoding/base64, after a prefix
// that must stay as it was.
func checkEncode(t *testing.T, src []byte) {
	t.Helper()
	prefix := []byte("prefix")
	got := AppendEncode(bytes.Clone(prefix), src)
	want := base64.StdEncoding.AppendEncode(bytes.Clone(prefix), src)
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendEncode(% x)\n got %q\nwant %q", src, got, want)
	}
}

// checkDecode compares AppendDecode with encoding/base64: the bytes, and
// the error (the same offset), on valid and invalid input alike.
func checkDecode(t *testing.T, src []byte) {
	t.Helper()
	prefix := []byte("prefix")
	got, gotErr := AppendDecode(bytes.Clone(prefix), src)
	want, wantErr := base64.StdEncoding.AppendDecode(bytes.Clone(prefix), src)
	if (gotErr == nil) != (wantErr == nil) || gotErr != nil && gotErr.Error() != wantErr.Error() {
		t.Fatalf("AppendDecode(%q): error %v, want %v", src, gotErr, wantErr)
	}
	if wantErr == nil && !bytes.Equal(got, want) {
		t.Fatalf("AppendDecode(%q)\n got % x\nwant % x", src, got, want)
	}
}

// TestRoundTrip: every length up to a few blocks past the fast loops'
// bounds, of random bytes, encodes as encoding/base64 does and decodes
// back.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 200 {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(r.Uint32())
		}
		checkEncode(t, src)
		enc := base64.StdEncoding.EncodeToString(src)
		checkDecode(t, []byte(enc))
		back, err := AppendDecode(nil, []byte(enc))
		if err != nil || !bytes.Equal(back, src) {
			t.Fatalf("%d bytes: decoded back % x, %v", n, back, err)
		}
	}
}

// TestDecodeUnusual: what the fast loop leaves to encoding/base64 (a bad
// character anywhere, padding in the middle, newlines, a short block)
// answers as encoding/base64 does, offsets included.
func TestDecodeUnusual(t *testing.T) {
	valid := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("arcbox agent "), 10)) // 130 bytes: padded
	cases := []string{"", "=", "A", "AA==", "AAA=", "AAAA", "AAAAAAAA", "AAAAAAAAA", "AAAA====AAAAAAAA", "AAAAAAAA\nAAAAAAAA\r\nAAAA"}
	for i := range len(valid) {
		for _, bad := range []byte{'=', '\n', '\r', '-', '_', ' ', 0, 0x80, 0xff} {
			b := []byte(valid)
			b[i] = bad
			cases = append(cases, string(b))
		}
		cases = append(cases, valid[:i], valid[i:])
	}
	for _, c := range cases {
		checkDecode(t, []byte(c))
	}
}

func FuzzEncode(f *testing.F) {
	f.Add([]byte("arcbox"))
	f.Fuzz(func(t *testing.T, src []byte) { checkEncode(t, src) })
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("YXJjYm94IGFnZW50IHJ1bnMgc2FuZGJveGVz"))
	f.Add([]byte("YXJj\nYm94IGFnZW50==IHJ1bnMgc2FuZGJveGVz"))
	f.Fuzz(func(t *testing.T, src []byte) { checkDecode(t, src) })
}

// The benchmarks: a run's output message, 1 MiB of output.
var chunk = func() []byte {
	b := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

func BenchmarkEncode(b *testing.B) {
	for _, impl := range []struct {
		name string
		f    func(dst, src []byte) []byte
	}{{"base64x", AppendEncode}, {"stdlib", base64.StdEncoding.AppendEncode}} {
		b.Run(impl.name, func(b *testing.B) {
			var dst []byte
			b.SetBytes(int64(len(chunk)))
			for b.Loop() {
				dst = impl.f(dst[:0], chunk)
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	enc := base64.StdEncoding.AppendEncode(nil, chunk)
	for _, impl := range []struct {
		name string
		f    func(dst, src []byte) ([]byte, error)
	}{{"base64x", AppendDecode}, {"stdlib", base64.StdEncoding.AppendDecode}} {
		b.Run(impl.name, func(b *testing.B) {
			var dst []byte
			b.SetBytes(int64(len(chunk)))
			for b.Loop() {
				var err error
				if dst, err = impl.f(dst[:0], enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
