package rawhttp

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestDoReadsEachAnswerWhole: answers of different lengths on one kept
// connection are each read to their end, and a non-200 is an error.
func TestDoReadsEachAnswerWhole(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := int(n.Add(1))
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		// Under net/http's 2 KiB buffer: a Content-Length, not chunks.
		_, _ = io.WriteString(w, strings.Repeat("x", k*300))
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	c, err := Dial("unix", sock, Get("/ok"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 5 {
		if err := c.Do(); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	bad, err := Dial("unix", sock, Get("/missing"))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := bad.Do(); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("a 404: %v, want an error naming it", err)
	}
}

func TestAtoiTrim(t *testing.T) {
	for in, want := range map[string]int{" 42\r\n": 42, "7": 7, " \r\n": -1, "4x": -1} {
		if got := atoiTrim([]byte(in)); got != want {
			t.Errorf("atoiTrim(%q) = %d, want %d", in, got, want)
		}
	}
}
