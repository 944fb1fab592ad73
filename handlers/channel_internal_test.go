package handlers

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// TestParseClientFrame: an exec client's binary messages on the channel
// subprotocol: stdin, resize (both spellings) and the close of stdin are
// understood; anything else is a bad request whose message names what is
// wrong with it.
func TestParseClientFrame(t *testing.T) {
	good := []struct {
		msg  string
		want clientFrame
	}{
		{"\x00hello", clientFrame{kind: frameStdin, data: []byte("hello")}},
		{"\x00", clientFrame{kind: frameStdin, data: []byte{}}},
		{"\x00\x00\xff\x04", clientFrame{kind: frameStdin, data: []byte{0, 0xff, 4}}},
		{"\xff\x00", clientFrame{kind: frameCloseStdin}},
		{`` + "\x04" + `{"width":80,"height":24}`, clientFrame{kind: frameResize, size: sandbox.TTYSize{Width: 80, Height: 24}}},
		{"\x04" + `{"Width":132,"Height":50}`, clientFrame{kind: frameResize, size: sandbox.TTYSize{Width: 132, Height: 50}}},
		{"\x04" + `{"width":65535,"height":1}`, clientFrame{kind: frameResize, size: sandbox.TTYSize{Width: 65535, Height: 1}}},
	}
	for _, g := range good {
		f, err := parseClientFrame([]byte(g.msg))
		if err != nil {
			t.Errorf("%q: %v", g.msg, err)
			continue
		}
		if f.kind != g.want.kind || f.size != g.want.size || !bytes.Equal(f.data, g.want.data) {
			t.Errorf("%q: %+v, want %+v", g.msg, f, g.want)
		}
	}
	bad := []struct{ msg, says string }{
		{"", "empty"},
		{"\x01out", "channel 1"},
		{"\x02", "channel 2"},
		{"\x03{}", "channel 3"},
		{"\x05", "channel 5"},
		{"\x7f", "channel 127"},
		{"\xff", "0 bytes after the channel byte"},
		{"\xff\x00\x00", "2 bytes after the channel byte"},
		{"\xff\x01", "for channel 1"},
		{"\x04", "no JSON"},
		{"\x04 ", "resize message (channel 4)"},
		{"\x04{", "resize message (channel 4)"},
		{"\x04[80,24]", "resize message (channel 4)"},
		{"\x04" + `{"width":80}`, "both set"},
		{"\x04" + `{"Width":80}`, "both set"},
		{"\x04" + `{}`, "both set"},
		{"\x04" + `{"width":80,"height":24,"Width":80,"Height":24}`, "send one pair"},
		{"\x04" + `{"width":80,"Height":24}`, "send one pair"},
		{"\x04" + `{"WIDTH":80,"height":24}`, "WIDTH"},
		{"\x04" + `{"width":80,"height":24,"depth":1}`, "depth"},
		{"\x04" + `{"width":0,"height":24}`, "resize.width"},
		{"\x04" + `{"width":80,"height":65536}`, "resize.height"},
		{"\x04" + `{"width":-1,"height":24}`, "resize.width"},
		{"\x04" + `{"width":"80","height":24}`, "width"},
		{"\x04" + `{"width":80.5,"height":24}`, "width"},
	}
	for _, b := range bad {
		_, err := parseClientFrame([]byte(b.msg))
		if err == nil {
			t.Errorf("%q: accepted", b.msg)
			continue
		}
		if !errors.Is(err, httpapi.ErrBadRequest) {
			t.Errorf("%q: %v is no bad request", b.msg, err)
		}
		if !strings.Contains(err.Error(), b.says) {
			t.Errorf("%q: %q does not say %q", b.msg, err, b.says)
		}
		// A 4400's reason is cut at 123 bytes: what is wrong must fit.
		if len(err.Error()) > 123 && !strings.Contains(err.Error()[:120], b.says) {
			t.Errorf("%q: %q says %q only past a close reason's length", b.msg, err, b.says)
		}
	}
}

// TestChannelProtocolInContract: the subprotocol the handlers select is
// the one openapi.yaml documents on the run and exec WebSockets.
func TestChannelProtocolInContract(t *testing.T) {
	spec, _ := apitest.Spec(t)
	for _, path := range []string{"/v1/sandboxes/{id}/run", "/v1/sandboxes/{id}/exec"} {
		ws, _ := spec.Paths.Find(path).Get.Extensions["x-websocket"].(map[string]any)
		protos, _ := ws["subprotocols"].(map[string]any)
		if _, ok := protos[wschannel.Protocol].(map[string]any); !ok || len(protos) != 1 {
			t.Errorf("GET %s: x-websocket subprotocols %v, want %s alone", path, protos, wschannel.Protocol)
		}
	}
}

// FuzzParseClientFrame: no binary message makes the parser panic, and
// every one it accepts is one of the three it knows.
func FuzzParseClientFrame(f *testing.F) {
	for _, seed := range []string{"\x00hi", "\xff\x00", "\x04{\"width\":1,\"height\":1}", "\x04{\"Width\":9,\"Height\":9}", "", "\x09"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		fr, err := parseClientFrame(msg)
		if err != nil {
			return
		}
		switch {
		case fr.kind == frameStdin && msg[0] == wschannel.Stdin && bytes.Equal(fr.data, msg[1:]):
		case fr.kind == frameCloseStdin && bytes.Equal(msg, []byte{wschannel.Close, wschannel.Stdin}):
		case fr.kind == frameResize && msg[0] == wschannel.Resize && fr.size.Width > 0 && fr.size.Height > 0:
		default:
			t.Errorf("%q: accepted as %+v", msg, fr)
		}
	})
}

// TestChannelSendAfterAFailedMessage: once a binary message fails part
// way (the client went), the next write fails too instead of waiting for
// a writer the half-sent message still holds.
func TestChannelSendAfterAFailedMessage(t *testing.T) {
	// The deadline only ends a test that would otherwise hang.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	after := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{wschannel.Protocol}})
		if err != nil {
			after <- err
			return
		}
		o := newWSOutput(c)
		piece := make([]byte, 1<<20)
		for o.data(ctx, sandbox.StreamStdout, piece) == nil {
		}
		after <- o.status(ctx, []byte(`{"stream":"exit","done":true,"exit_code":0}`))
	}))
	defer srv.Close()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), &websocket.DialOptions{Subprotocols: []string{wschannel.Protocol}})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.CloseNow() // reads nothing, and goes
	err = <-after
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the exit after a failed message: %v, want the socket's error at once", err)
	}
}
