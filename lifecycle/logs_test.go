package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTail(t *testing.T) {
	long := strings.Repeat("x", 40<<10) // longer than a read chunk
	tests := []struct {
		content string
		n       int
		want    string
	}{
		{"", 5, ""},
		{"a\nb\nc\n", 0, ""},
		{"a\nb\nc\n", -1, ""},
		{"a\nb\nc\n", 1, "c\n"},
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc\n", 3, "a\nb\nc\n"},
		{"a\nb\nc\n", 10, "a\nb\nc\n"},
		{"a\nb\nc", 1, "c"},
		{"a\nb\nc", 2, "b\nc"},
		{"\n\n\n", 2, "\n\n"},
		{"only line", 3, "only line"},
		{long + "\n" + long + "\nend\n", 2, long + "\nend\n"},
		{long + "\nend", 5, long + "\nend"},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, end, err := Tail(f, tt.n)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("Tail(%q, %d): got %q, want %q", trunc(tt.content), tt.n, trunc(string(got)), trunc(tt.want))
			}
			if end != int64(len(tt.content)) {
				t.Errorf("end: got %d, want %d", end, len(tt.content))
			}
		})
	}
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:20] + "…" + s[len(s)-20:]
	}
	return s
}

func TestTailIsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, bytes.Repeat([]byte("y"), MaxTailBytes+1000), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, _, err := Tail(f, 1)
	if err != nil || len(got) != MaxTailBytes {
		t.Fatalf("one huge line: got %d bytes, %v; want %d", len(got), err, MaxTailBytes)
	}
}

func TestTailFromOffset(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("old 1\nold 2\nnew 1\nnew 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, _, err := tailFrom(f, int64(len("old 1\nold 2\n")), 10)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "new 1\nnew 2\n" {
		t.Fatalf("got %q, want only what was written after the offset", got)
	}
}

func logRuntime(t *testing.T) (*Runtime, Config) {
	t.Helper()
	cfg := testConfig(t, shortTempDir(t))
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, cfg
}

func TestOpenLog(t *testing.T) {
	r, cfg := logRuntime(t)
	ctx := context.Background()
	if _, err := r.OpenLog(ctx, "sshd", LogOptions{}); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("unknown service: got %v, want ErrUnknownService", err)
	}
	_, err := r.OpenLog(ctx, Dockerd, LogOptions{})
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrUnknownService) || !strings.Contains(err.Error(), "dockerd has not logged yet") {
		t.Fatalf("absent log: got %v, want a not-found error", err)
	}
	if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.LogDir, "dockerd.log"), []byte("l1\nl2\nl3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := readLog(r, Dockerd, LogOptions{}); err != nil || got != "l1\nl2\nl3\n" {
		t.Fatalf("whole log: %q, %v", got, err)
	}
	if got, err := readLog(r, Dockerd, LogOptions{Tail: 2}); err != nil || got != "l2\nl3\n" {
		t.Fatalf("tail: %q, %v", got, err)
	}
	if _, err := r.OpenLog(ctx, "nope", LogOptions{Tail: 2}); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("tail of an unknown service: %v", err)
	}
}

// readLog reads a log that is not followed to its end.
func readLog(r *Runtime, service string, opt LogOptions) (string, error) {
	s, err := r.OpenLog(context.Background(), service, opt)
	if err != nil {
		return "", err
	}
	defer s.Close()
	b, err := io.ReadAll(s)
	return string(b), err
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestFollow(t *testing.T) {
	r, cfg := logRuntime(t)
	if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cfg.LogDir, "containerd.log")
	if err := os.WriteFile(path, []byte("before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := r.OpenLog(ctx, Containerd, LogOptions{Tail: 1, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { _, err := io.Copy(&out, s); done <- err }()
	waitUntil(t, time.Minute, "the tail", func() bool { return out.String() == "before\n" })
	out.Reset() // what follows is what is appended

	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteString("after 1\n"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "the first appended line", func() bool { return out.String() == "after 1\n" })
	if _, err := w.WriteString("after 2\n"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "the second appended line", func() bool { return out.String() == "after 1\nafter 2\n" })

	// Truncated (rotated in place): followed from the start again.
	if err := w.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteString("fresh\n"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "the truncated log's line", func() bool { return strings.HasSuffix(out.String(), "fresh\n") })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the followed log did not end when its context ended")
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("client gone") }

func TestFollowStopsWhenTheWriterFails(t *testing.T) {
	r, cfg := logRuntime(t)
	if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.LogDir, "dockerd.log"), []byte("line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := r.OpenLog(context.Background(), Dockerd, LogOptions{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := io.Copy(failingWriter{}, s); err == nil || err.Error() != "client gone" {
		t.Fatalf("follow: %v, want the writer's error", err)
	}
	if _, err := r.OpenLog(context.Background(), "nope", LogOptions{Follow: true}); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("follow of an unknown service: %v", err)
	}
}
