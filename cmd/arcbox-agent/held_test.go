package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// listenUnixT listens on a fresh unix socket; the test closes it.
func listenUnixT(t *testing.T) (net.Listener, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, sock
}

// TestHeldListenersAnswerWhatCameBefore checks that a request sent to a
// held listener is not refused: it waits, unserved, and is answered once
// the listeners are handed over; a listener bound after that is served at
// once.
func TestHeldListenersAnswerWhatCameBefore(t *testing.T) {
	var h heldListeners
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})}
	t.Cleanup(func() { srv.Close() })
	var mu sync.Mutex
	served := 0
	serve := func(ln net.Listener) {
		mu.Lock()
		served++
		mu.Unlock()
		go func() { _ = srv.Serve(ln) }()
	}
	servedSoFar := func() int { mu.Lock(); defer mu.Unlock(); return served }

	ln, sock := listenUnixT(t)
	h.hold(serve)(ln)
	c, err := net.Dial("unix", sock) // queued by the kernel: the listener is bound
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: agent\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if n := servedSoFar(); n != 0 {
		t.Fatalf("served %d listeners before the hand-over", n)
	}

	h.handOver()
	_ = c.SetReadDeadline(time.Now().Add(time.Minute)) // a failure guard only
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the request sent before the hand-over: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}

	late, _ := listenUnixT(t)
	h.hold(serve)(late)
	if n := servedSoFar(); n != 2 {
		t.Fatalf("served %d listeners, want 2: one bound after the hand-over is served at once", n)
	}
	h.drop() // after the hand-over, the server's to close
	c2, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("drop after the hand-over closed a served listener: %v", err)
	}
	c2.Close()
}

// TestHeldListenersDrop checks that an agent that cannot serve closes the
// listeners it held, and any bound after, and serves none.
func TestHeldListenersDrop(t *testing.T) {
	var h heldListeners
	serve := func(net.Listener) { t.Error("a dropped listener was served") }
	ln, sock := listenUnixT(t)
	h.hold(serve)(ln)
	h.drop()
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		t.Fatal("a dropped listener still accepts connections")
	}
	late, lateSock := listenUnixT(t)
	h.hold(serve)(late)
	if c, err := net.Dial("unix", lateSock); err == nil {
		c.Close()
		t.Fatal("a listener bound after the drop still accepts connections")
	}
	h.handOver() // too late: nothing is served
}
