package client_test

import (
	"bytes"
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

const channelProtocol = "v5.channel.k8s.io"

// channelHandler accepts a WebSocket speaking the channel subprotocol
// when the client offers it, records what the client offered, and hands
// the socket to serve.
func channelHandler(t *testing.T, offered *[]string, serve func(ctx context.Context, c *websocket.Conn)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*offered = r.Header.Values("Sec-WebSocket-Protocol")
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{channelProtocol}})
		if err != nil {
			t.Error(err)
			return
		}
		defer func() { _ = c.CloseNow() }()
		serve(r.Context(), c)
	})
}

func frame(ch byte, payload string) []byte { return append([]byte{ch}, payload...) }

// TestRunWSChannels: RunWS offers the subprotocol; when the server
// selects it, the output comes as raw bytes on channels 1 and 2 and the
// exit as JSON on 3, and the Outputs are those of the JSON messages, a
// message larger than the read buffer's first size too. With
// WithJSONWebSockets nothing is offered.
func TestRunWSChannels(t *testing.T) {
	var offered []string
	var req []byte
	var typ websocket.MessageType
	big := bytes.Repeat([]byte("0123456789abcdef"), 40<<10) // over the read buffer's first size
	h := channelHandler(t, &offered, func(ctx context.Context, c *websocket.Conn) {
		typ, req, _ = c.Read(ctx)
		if c.Subprotocol() != channelProtocol {
			for _, l := range runLines {
				_ = c.Write(ctx, websocket.MessageText, []byte(l))
			}
			_ = c.Close(websocket.StatusNormalClosure, "")
			return
		}
		for _, m := range [][]byte{
			frame(3, `{"stream":"start","run_id":"r-1"}`),
			frame(1, "hello\n"), append([]byte{1}, big...), frame(2, "oops"), frame(1, "\x00\xff"),
			frame(3, `{"stream":"exit","done":true,"exit_code":3,"run_id":"r-1","truncated":["stdout"],"message":"stdout was cut"}`),
		} {
			_ = c.Write(ctx, websocket.MessageBinary, m)
		}
		_ = c.Close(websocket.StatusNormalClosure, "")
	})
	var seen []string
	c := serve(t, h, client.WithObserver(func(schema string, msg []byte) { seen = append(seen, schema+" "+string(msg)) }))
	ctx := testCtx(t)
	var outs []client.Output
	for o, err := range c.RunWS(ctx, "box", api.RunRequest{Cmd: []string{"x"}}) {
		if err != nil {
			t.Fatal(err)
		}
		o.Data = bytes.Clone(o.Data) // valid until the next iteration
		outs = append(outs, o)
	}
	if !slices.Equal(offered, []string{channelProtocol}) {
		t.Errorf("the client offered %q, want %s", offered, channelProtocol)
	}
	if typ != websocket.MessageText || string(req) != `{"cmd":["x"]}` {
		t.Errorf("the first message was %v %s, want the run request as text", typ, req)
	}
	want := []client.Output{
		{Stream: "start", RunID: "r-1"},
		{Stream: "stdout", Data: []byte("hello\n")}, {Stream: "stdout", Data: big}, {Stream: "stderr", Data: []byte("oops")},
		{Stream: "stdout", Data: []byte{0, 0xff}},
		{Stream: "exit", RunID: "r-1", Exit: &client.Exit{Code: 3, Truncated: []string{"stdout"}, Message: "stdout was cut"}},
	}
	if len(outs) != len(want) {
		t.Fatalf("%d outputs, want %d: %+v", len(outs), len(want), outs)
	}
	for i, o := range outs {
		w := want[i]
		if o.Stream != w.Stream || o.RunID != w.RunID || !bytes.Equal(o.Data, w.Data) || (o.Exit == nil) != (w.Exit == nil) ||
			o.Exit != nil && (o.Exit.Code != w.Exit.Code || o.Exit.Message != w.Exit.Message || !slices.Equal(o.Exit.Truncated, w.Exit.Truncated)) {
			t.Errorf("output %d: %+v, want %+v", i, o, w)
		}
	}
	if len(seen) != 3 || seen[0] != `RunRequest {"cmd":["x"]}` ||
		!strings.HasPrefix(seen[1], `OutputMessage {"stream":"start"`) || !strings.HasPrefix(seen[2], `OutputMessage {"stream":"exit"`) {
		t.Errorf("the observer saw %.300q, want the request, the start and the exit", seen)
	}

	// The same server, not offered the subprotocol: JSON messages.
	plain := serve(t, h, client.WithJSONWebSockets())
	stdout, stderr, exit, err := collect(t, plain.RunWS(ctx, "box", api.RunRequest{Cmd: []string{"x"}}))
	if err != nil || stdout != "hello\n" || stderr != "oops" || exit == nil || exit.Code != 3 {
		t.Errorf("run over JSON: %q %q %+v %v", stdout, stderr, exit, err)
	}
	if len(offered) != 0 {
		t.Errorf("with WithJSONWebSockets the client offered %q", offered)
	}
}

// TestRunWSChannelsContract: a server that breaks the subprotocol's
// contract ends the stream with an error, not with wrong output.
func TestRunWSChannelsContract(t *testing.T) {
	exit := frame(3, `{"stream":"exit","done":true,"exit_code":0}`)
	for name, msgs := range map[string][][]byte{
		"a text message":           {[]byte(runLines[0])},
		"an empty message":         {{}},
		"an unknown channel":       {frame(7, "x")},
		"stdin from the server":    {frame(0, "x")},
		"output without data":      {frame(1, "")},
		"output on the status":     {frame(3, runLines[0])},
		"status that is no JSON":   {frame(3, "exit 0")},
		"a message after the exit": {exit, frame(1, "late")},
	} {
		var offered []string
		c := serve(t, channelHandler(t, &offered, func(ctx context.Context, c *websocket.Conn) {
			_, _, _ = c.Read(ctx)
			for _, m := range msgs {
				typ := websocket.MessageBinary
				if len(m) > 0 && m[0] == '{' {
					typ = websocket.MessageText
				}
				_ = c.Write(ctx, typ, m)
			}
			_ = c.Close(websocket.StatusNormalClosure, "")
		}))
		if _, _, _, err := collect(t, c.RunWS(testCtx(t), "box", api.RunRequest{Cmd: []string{"x"}})); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestExecSessionChannels: over the subprotocol, stdin goes as [0]+bytes,
// a resize as [4]+JSON, the end of stdin as [255, 0]; init and signals
// stay JSON text messages.
func TestExecSessionChannels(t *testing.T) {
	var offered []string
	type msg struct {
		typ  websocket.MessageType
		data string
	}
	var got []msg
	c := serve(t, channelHandler(t, &offered, func(ctx context.Context, c *websocket.Conn) {
		for {
			typ, m, err := c.Read(ctx)
			if err != nil {
				return
			}
			got = append(got, msg{typ, string(m)})
			switch {
			case typ == websocket.MessageBinary && len(m) > 0 && m[0] == 0:
				_ = c.Write(ctx, websocket.MessageBinary, append([]byte{1}, m[1:]...))
			case typ == websocket.MessageBinary && bytes.Equal(m, []byte{255, 0}):
				_ = c.Write(ctx, websocket.MessageBinary, frame(3, `{"stream":"exit","done":true,"exit_code":0}`))
				_ = c.Close(websocket.StatusNormalClosure, "")
				return
			}
		}
	}))
	ctx := testCtx(t)
	s, err := c.Exec(ctx, "box", api.ExecInit{Cmd: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("hello\n\x00")); err != nil {
		t.Fatal(err)
	}
	for o, err := range s.Output() {
		if err != nil || o.Stream != "stdout" || string(o.Data) != "hello\n\x00" {
			t.Fatalf("echo: %+v, %v", o, err)
		}
		break
	}
	if err := s.Resize(132, 43); err != nil {
		t.Fatal(err)
	}
	if err := s.Signal("INT"); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	exit, err := s.Wait()
	if err != nil || exit.Code != 0 {
		t.Fatalf("wait: %+v, %v", exit, err)
	}
	want := []msg{
		{websocket.MessageText, `{"init":{"cmd":["cat"]}}`},
		{websocket.MessageBinary, "\x00hello\n\x00"},
		{websocket.MessageBinary, "\x04" + `{"width":132,"height":43}`},
		{websocket.MessageText, `{"signal":"INT"}`},
		{websocket.MessageBinary, "\xff\x00"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("the server got %v, want %v", got, want)
	}
	if !slices.Equal(offered, []string{channelProtocol}) {
		t.Errorf("the client offered %q", offered)
	}
}
