package wschannel_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
)

// serve runs handle on each WebSocket the agent's own Accept makes,
// offering the channel subprotocol; it returns the ws:// URL.
func serve(t *testing.T, handle func(*websocket.Conn)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c := httpapi.AcceptWebSocket(w, r, wschannel.Protocol); c != nil {
			defer func() { _ = c.CloseNow() }()
			handle(c)
		}
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// TestSpoken: the channel subprotocol is spoken whenever the handshake
// chose it, whatever the letter case of the client's offer (which the
// handshake matches so and echoes).
func TestSpoken(t *testing.T) {
	// The deadline only ends a test that would otherwise hang.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	got := make(chan bool, 1)
	url := serve(t, func(c *websocket.Conn) { got <- wschannel.Spoken(c) })
	for _, tt := range []struct {
		offer []string
		want  bool
	}{
		{[]string{wschannel.Protocol}, true},
		{[]string{"V5.Channel.K8s.IO"}, true},
		{[]string{"v4.channel.k8s.io"}, false},
		{nil, false},
	} {
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: tt.offer})
		if err != nil {
			t.Fatal(err)
		}
		if speaks := <-got; speaks != tt.want {
			t.Errorf("offered %q (chosen %q): channels %v, want %v", tt.offer, c.Subprotocol(), speaks, tt.want)
		}
		_ = c.CloseNow()
	}
}

// TestReadMessage: messages of every size, empty to many times the
// buffer's first size, are read whole and in order into one buffer, which
// keeps the largest room it needed.
func TestReadMessage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sizes := []int{0, 1, 100, 4096, 70000, 3, 1 << 20, 10}
	msg := func(n int) []byte { return bytes.Repeat([]byte{byte(n)}, n) }
	url := serve(t, func(c *websocket.Conn) {
		for i, n := range sizes {
			typ := websocket.MessageBinary
			if i%2 == 1 {
				typ = websocket.MessageText
			}
			if err := c.Write(ctx, typ, msg(n)); err != nil {
				t.Error(err)
				return
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	})
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.CloseNow() }()
	c.SetReadLimit(2 << 20)
	var buf []byte
	for i, n := range sizes {
		typ, got, err := wschannel.ReadMessage(ctx, c, &buf)
		wantTyp := websocket.MessageBinary
		if i%2 == 1 {
			wantTyp = websocket.MessageText
		}
		if err != nil || typ != wantTyp || !bytes.Equal(got, msg(n)) {
			t.Fatalf("message %d: %v, %d bytes, %v; want %v, %d bytes", i, typ, len(got), err, wantTyp, n)
		}
	}
	if cap(buf) < 1<<20 {
		t.Errorf("the buffer kept %d bytes of room, want the largest message's", cap(buf))
	}
	if _, _, err := wschannel.ReadMessage(ctx, c, &buf); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Errorf("after the last message: %v, want the normal close", err)
	}
}
