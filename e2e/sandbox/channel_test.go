package sandbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
)

// The run and exec WebSockets' binary subprotocol, read frame by frame
// here (the SDK speaks it too: the WebSocket tests elsewhere go through
// it); its contract is openapi.yaml's x-websocket subprotocols.

const channelProtocol = "v5.channel.k8s.io"

// channelConn is a run or exec WebSocket on the channel subprotocol.
type channelConn struct {
	t   testing.TB
	ctx context.Context
	c   *websocket.Conn
}

// dialChannels opens the run or exec WebSocket of id offering the
// subprotocol, requires the agent to select it, and sends first (the run
// request or the exec's init) as the JSON text message.
func (a *agentProc) dialChannels(ctx context.Context, t testing.TB, id, what string, first any) *channelConn {
	t.Helper()
	c, resp, err := websocket.Dial(ctx, "ws://agent/v1/sandboxes/"+id+"/"+what, &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: a.Transport()},
		CompressionMode: websocket.CompressionDisabled,
		Subprotocols:    []string{channelProtocol},
	})
	if err != nil {
		t.Fatalf("%s WebSocket: %v (%s)", what, err, statusOf(resp))
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	if c.Subprotocol() != channelProtocol {
		t.Fatalf("%s WebSocket: the agent selected subprotocol %q, want %s", what, c.Subprotocol(), channelProtocol)
	}
	c.SetReadLimit(16 << 20)
	cc := &channelConn{t: t, ctx: ctx, c: c}
	if first != nil {
		body, _ := json.Marshal(first)
		cc.send(websocket.MessageText, body)
	}
	return cc
}

func (cc *channelConn) send(typ websocket.MessageType, msg []byte) {
	cc.t.Helper()
	if err := cc.c.Write(cc.ctx, typ, msg); err != nil {
		cc.t.Fatalf("send %q: %v", msg, err)
	}
}

// sendOn sends payload on channel ch.
func (cc *channelConn) sendOn(ch byte, payload string) {
	cc.t.Helper()
	cc.send(websocket.MessageBinary, append([]byte{ch}, payload...))
}

// channelOutput is what the server sent on its channels.
type channelOutput struct {
	stdout, stderr []byte
	status         [][]byte // channel 3's JSON messages
	frames         int      // output messages on channels 1 and 2
}

// readUntil reads the server's messages, every one binary on channel 1,
// 2 or 3 and never an empty piece of output, until done says enough.
func (cc *channelConn) readUntil(out *channelOutput, done func(*channelOutput) bool) {
	cc.t.Helper()
	for !done(out) {
		typ, msg, err := cc.c.Read(cc.ctx)
		if err != nil {
			cc.t.Fatalf("after %d bytes of stdout (%q...), %d of stderr: %v", len(out.stdout), lastBytes(out.stdout, 200), len(out.stderr), err)
		}
		if typ != websocket.MessageBinary || len(msg) < 2 {
			cc.t.Fatalf("a %v message %.200q, want a binary one with a channel and a payload", typ, msg)
		}
		switch msg[0] {
		case 1:
			out.stdout = append(out.stdout, msg[1:]...)
			out.frames++
		case 2:
			out.stderr = append(out.stderr, msg[1:]...)
			out.frames++
		case 3:
			checkSchema(cc.t, "OutputMessage", msg[1:])
			out.status = append(out.status, bytes.Clone(msg[1:]))
		default:
			cc.t.Fatalf("a message on channel %d: %.200q", msg[0], msg)
		}
	}
}

// exit reads to the exit message on channel 3 and the normal close after
// it, and returns the exit message.
func (cc *channelConn) exit(out *channelOutput) api.OutputMessage {
	cc.t.Helper()
	cc.readUntil(out, func(o *channelOutput) bool {
		return len(o.status) > 0 && bytes.Contains(o.status[len(o.status)-1], []byte(`"exit"`))
	})
	var m api.OutputMessage
	if err := json.Unmarshal(out.status[len(out.status)-1], &m); err != nil || m.ExitCode == nil || m.Done == nil || !*m.Done {
		cc.t.Fatalf("exit message %s (%v), want done and an exit code", out.status[len(out.status)-1], err)
	}
	if _, msg, err := cc.c.Read(cc.ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		cc.t.Errorf("after the exit: %.200q, %v; want a normal close", msg, err)
	}
	return m
}

// closedWith reads until the server closes, and requires code and a
// reason that says says.
func (cc *channelConn) closedWith(code websocket.StatusCode, says string) {
	cc.t.Helper()
	for {
		_, msg, err := cc.c.Read(cc.ctx)
		if err == nil {
			continue // output the workload wrote before
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != code || !strings.Contains(ce.Reason, says) {
			cc.t.Errorf("closed with %v (last message %.100q), want %d saying %q", err, msg, code, says)
		}
		return
	}
}

// TestChannelRun: a run over the subprotocol sends stdout and stderr raw
// on channels 1 and 2, byte for byte what the command wrote (a few MiB of
// random bytes each, checked against the sandbox's own sha256sum), and
// its exit as the JSON exit message on channel 3, last, then a normal
// close; with detach_on_disconnect the start message comes first on 3.
func TestChannelRun(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("chan-run")})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	sums := a.sh(t, id, "head -c 3145728 /dev/urandom > /tmp/out; head -c 1048581 /dev/urandom > /tmp/err; sha256sum /tmp/out /tmp/err")
	want := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(sums), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			want[f[1]] = f[0]
		}
	}
	cc := a.dialChannels(ctx, t, id, "run", api.RunRequest{Cmd: []string{"sh", "-c", "cat /tmp/out & cat /tmp/err >&2; wait; exit 7"}})
	var out channelOutput
	m := cc.exit(&out)
	if *m.ExitCode != 7 || m.Stream != "exit" {
		t.Errorf("exit message %+v, want exit 7", m)
	}
	for name, got := range map[string][]byte{"/tmp/out": out.stdout, "/tmp/err": out.stderr} {
		sum := sha256.Sum256(got)
		if hex.EncodeToString(sum[:]) != want[name] || want[name] == "" {
			t.Errorf("%s: %d bytes with sha256 %x, want the sandbox's %q (sha256sum said %q)", name, len(got), sum, want[name], sums)
		}
	}
	if len(out.status) != 1 {
		t.Errorf("status messages %q, want the exit alone", out.status)
	}
	t.Logf("%d output messages for %d bytes", out.frames, len(out.stdout)+len(out.stderr))

	cc = a.dialChannels(ctx, t, id, "run", api.RunRequest{Cmd: []string{"echo", "detached"}, DetachOnDisconnect: agenttest.Ptr(true)})
	out = channelOutput{}
	m = cc.exit(&out)
	if len(out.status) != 2 || !bytes.HasPrefix(out.status[0], []byte(`{"stream":"start","run_id":"`)) || m.RunId == nil ||
		!bytes.Contains(out.status[0], []byte(*m.RunId)) || string(out.stdout) != "detached\n" || *m.ExitCode != 0 {
		t.Errorf("a detachable run: status %q, stdout %q; want the start with the run's id, its output, the exit", out.status, out.stdout)
	}
	a.remove(t, id, false)
}

// TestChannelExec: an exec over the subprotocol takes stdin as raw bytes
// on channel 0 (every byte value, a MiB in pieces), and [255, 0] ends it:
// cat echoes it all and exits 0.
func TestChannelExec(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("chan-exec")})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cc := a.dialChannels(ctx, t, id, "exec", api.ExecClientMessage{Init: &api.ExecInit{Cmd: []string{"cat"}}})
	in := make([]byte, 1<<20)
	for i := range in {
		in[i] = byte(i*7 + i>>8)
	}
	var out channelOutput
	for rest := in; len(rest) > 0; rest = rest[min(len(rest), 100<<10):] {
		cc.sendOn(0, string(rest[:min(len(rest), 100<<10)]))
	}
	cc.readUntil(&out, func(o *channelOutput) bool { return len(o.stdout) >= len(in) })
	cc.sendOn(0, "") // nothing: not the end
	cc.sendOn(0, "tail")
	cc.send(websocket.MessageBinary, []byte{255, 0})
	m := cc.exit(&out)
	if !bytes.Equal(out.stdout, append(in, "tail"...)) || len(out.stderr) != 0 || *m.ExitCode != 0 {
		t.Errorf("cat: %d bytes of stdout (equal: %v), stderr %q, exit %d; want its input back, nothing, 0",
			len(out.stdout), bytes.Equal(out.stdout, append(in, "tail"...)), out.stderr, *m.ExitCode)
	}
	a.remove(t, id, false)
}

// TestChannelResize: a resize on channel 4, with this API's names and
// with Kubernetes' capitalised ones, reaches the exec's terminal: `stty
// size` prints it.
func TestChannelResize(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("chan-tty")})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	script := `stty size; while read -r line; do [ "$line" = q ] && exit 3; stty size; done`
	cc := a.dialChannels(ctx, t, id, "exec", api.ExecClientMessage{Init: &api.ExecInit{
		Cmd: []string{"sh", "-c", script}, Tty: agenttest.Ptr(true), TtySize: &api.TTYSize{Width: 80, Height: 24}}})
	var out channelOutput
	sizes := func() []string {
		var got []string
		for _, m := range sizeLine.FindAllStringSubmatch(string(out.stdout), -1) {
			got = append(got, m[1]+" "+m[2])
		}
		return got
	}
	cc.readUntil(&out, func(*channelOutput) bool { return len(sizes()) >= 1 })
	for _, resize := range []struct{ msg, want string }{
		{`{"width":100,"height":30}`, "30 100"},
		{`{"Width":120,"Height":40}`, "40 120"},
	} {
		cc.sendOn(4, resize.msg)
		// The resize reaches the terminal apart from stdin: ask again, a
		// line at a time, until the new size shows.
		for {
			asked := len(sizes())
			cc.sendOn(0, "\n")
			cc.readUntil(&out, func(*channelOutput) bool { return len(sizes()) > asked })
			if got := sizes(); got[len(got)-1] == resize.want {
				break
			}
		}
	}
	cc.sendOn(0, "q\n")
	if m := cc.exit(&out); *m.ExitCode != 3 {
		t.Errorf("exit %d, want 3 (stdout %q)", *m.ExitCode, out.stdout)
	}
	a.remove(t, id, false)
}

// TestChannelBadFrames: a binary message the subprotocol does not know
// closes the socket with 4400 naming what is wrong, as a bad JSON
// message does, and so does a binary first message or any binary
// message on a run.
func TestChannelBadFrames(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("chan-bad")})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cat := api.ExecClientMessage{Init: &api.ExecInit{Cmd: []string{"cat"}}}
	for _, bad := range []struct {
		msg  []byte
		says string
	}{
		{[]byte{}, "empty"},
		{[]byte{9, 'x'}, "channel 9"},
		{[]byte{1, 'x'}, "channel 1"},
		{[]byte{255}, "want 1"},
		{[]byte{255, 1}, "for channel 1"},
		{append([]byte{4}, "80x24"...), "resize message (channel 4)"},
		{append([]byte{4}, `{"width":0,"height":24}`...), "resize.width"},
	} {
		cc := a.dialChannels(ctx, t, id, "exec", cat)
		cc.sendOn(0, "before\n")
		cc.send(websocket.MessageBinary, bad.msg)
		cc.closedWith(4400, bad.says)
	}
	cc := a.dialChannels(ctx, t, id, "exec", nil)
	cc.send(websocket.MessageBinary, []byte(`{"init":{"cmd":["cat"]}}`))
	cc.closedWith(4400, "first message: binary")

	cc = a.dialChannels(ctx, t, id, "run", api.RunRequest{Cmd: []string{"sleep", "60"}})
	cc.sendOn(0, "x")
	cc.closedWith(4400, "binary message on a run")
	a.remove(t, id, true) // the hung-up sleep may still be going
}

// TestChannelFallback: a client that offers no subprotocol, or only ones
// the agent does not speak, gets the JSON text messages, the bytes in
// base64; the SDK with WithJSONWebSockets speaks them for run and exec.
func TestChannelFallback(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	id := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("chan-json")})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://agent/v1/sandboxes/"+id+"/run", &websocket.DialOptions{
		HTTPClient:   &http.Client{Transport: a.Transport()},
		Subprotocols: []string{"v4.channel.k8s.io", "base64.channel.k8s.io"},
	})
	if err != nil {
		t.Fatalf("run WebSocket: %v (%s)", err, statusOf(resp))
	}
	defer func() { _ = c.CloseNow() }()
	if c.Subprotocol() != "" {
		t.Errorf("the agent selected %q of subprotocols it does not speak", c.Subprotocol())
	}
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"cmd":["echo","hi"]}`)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Errorf("closed with %v", err)
			}
			break
		}
		if typ != websocket.MessageText {
			t.Errorf("a %v message %q, want text", typ, msg)
		}
		checkSchema(t, "OutputMessage", msg)
		got = append(got, string(msg))
	}
	if len(got) != 2 || got[0] != `{"stream":"stdout","data":"aGkK"}` || !strings.HasPrefix(got[1], `{"stream":"exit","exit_code":0,"done":true`) {
		t.Errorf("messages %q, want hi's output in base64, then the exit", got)
	}

	sdk := a.SDK(t, client.WithJSONWebSockets())
	w := newWSRun(t, sdk.RunWS(ctx, id, api.RunRequest{Cmd: []string{"sh", "-c", "echo out; echo err >&2; exit 4"}}), nil)
	if res := w.finish(ctx); string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" || res.Code != 4 {
		t.Errorf("run over JSON through the SDK: %+v", res)
	}
	s, err := sdk.Exec(ctx, id, api.ExecInit{Cmd: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w = newWSRun(t, s.Output(), []string{"cat"})
	w.exec = s
	w.stdin("echoed")
	if err := s.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if res := w.finish(ctx); string(res.Stdout) != "echoed" || res.Code != 0 {
		t.Errorf("exec over JSON through the SDK: %+v", res)
	}
	a.remove(t, id, false)
}
