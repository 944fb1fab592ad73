package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/internal/sandboxfake"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// signalServer serves the agent's handlers over m and returns its
// WebSocket base URL (ws://host).
func signalServer(t *testing.T, m handlers.SandboxManager) string {
	t.Helper()
	srv := httptest.NewServer(sandboxfake.Handler(m))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// workloadSocket is a run or exec WebSocket of sandbox box-1 on one of
// the two protocols, with its first message sent and the workload's
// "ready" read, so that what comes next reaches a running workload.
type workloadSocket struct {
	t        *testing.T
	ctx      context.Context
	c        *websocket.Conn
	channels bool
}

// firstMessages are the first message of each workload WebSocket, to
// start sleep 9.
var firstMessages = map[string]string{
	"run":  `{"cmd":["sleep","9"]}`,
	"exec": `{"init":{"cmd":["sleep","9"]}}`,
}

func openWorkload(t *testing.T, base, what string, channels bool) *workloadSocket {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	t.Cleanup(cancel)
	var opts websocket.DialOptions
	if channels {
		opts.Subprotocols = []string{wschannel.Protocol}
	}
	c, _, err := websocket.Dial(ctx, base+"/v1/sandboxes/box-1/"+what, &opts)
	must(t, err)
	t.Cleanup(func() { _ = c.CloseNow() })
	if got := c.Subprotocol() == wschannel.Protocol; got != channels {
		t.Fatalf("%s: the channel subprotocol selected: %v, want %v", what, got, channels)
	}
	w := &workloadSocket{t: t, ctx: ctx, c: c, channels: channels}
	w.send(firstMessages[what])
	typ, msg, err := c.Read(ctx)
	must(t, err)
	want, wantTyp := `{"stream":"stdout","data":"cmVhZHkK"}`, websocket.MessageText
	if channels {
		want, wantTyp = "\x01ready\n", websocket.MessageBinary
	}
	if typ != wantTyp || string(msg) != want {
		t.Fatalf("%s: the first output is %v %q, want %v %q", what, typ, msg, wantTyp, want)
	}
	return w
}

// send sends a JSON text message, as signals are on both protocols.
func (w *workloadSocket) send(msg string) {
	w.t.Helper()
	must(w.t, w.c.Write(w.ctx, websocket.MessageText, []byte(msg)))
}

// exit reads the exit message (on the status channel of the subprotocol)
// and the normal close after it.
func (w *workloadSocket) exit() api.OutputMessage {
	w.t.Helper()
	typ, msg, err := w.c.Read(w.ctx)
	must(w.t, err)
	switch {
	case w.channels && (typ != websocket.MessageBinary || len(msg) == 0 || msg[0] != wschannel.Status):
		w.t.Fatalf("the exit is %v %q, want a binary message on the status channel", typ, msg)
	case w.channels:
		msg = msg[1:]
	case typ != websocket.MessageText:
		w.t.Fatalf("the exit is %v %q, want a text message", typ, msg)
	}
	var m api.OutputMessage
	must(w.t, json.Unmarshal(msg, &m))
	if _, _, err := w.c.Read(w.ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		w.t.Errorf("after the exit: %v, want a normal close", err)
	}
	return m
}

// TestWebSocketSignals: a signal message on a run or exec WebSocket, on
// the JSON protocol and on v5.channel.k8s.io (where it stays a JSON text
// message), reaches the workload's ExecIO.Signals as the signal it names,
// with or without SIG; the exit reports it.
func TestWebSocketSignals(t *testing.T) {
	for _, what := range []string{"run", "exec"} {
		for _, channels := range []bool{false, true} {
			for name, want := range map[string]sandbox.Signal{"INT": unix.SIGINT, "SIGTERM": unix.SIGTERM} {
				t.Run(fmt.Sprintf("%s/channels=%v/%s", what, channels, name), func(t *testing.T) {
					m := sandboxfake.NewSignalWorkloads()
					w := openWorkload(t, signalServer(t, m), what, channels)
					w.send(`{"signal":"` + name + `"}`)
					exit := w.exit()
					if how, sigs := m.End(t), m.Signals(); how != "signal" || !slices.Equal(sigs, []sandbox.Signal{want}) {
						t.Errorf("the workload ended by %s, with the signals %v; want by [%v]", how, sigs, want)
					}
					if exit.Stream != api.Exit || exit.ExitCode == nil || *exit.ExitCode != 128+int32(want) ||
						exit.Signal == nil || *exit.Signal != unix.SignalName(want) {
						t.Errorf("exit %+v, want %d and %s", exit, 128+int(want), unix.SignalName(want))
					}
				})
			}
		}
	}
}

// TestWebSocketBadSignal: a signal name that is none closes the run or
// exec WebSocket with 4400, the reason naming the field and the name
// (cut at the close frame's 123 bytes, as every close reason is);
// nothing reaches the workload, which is hung up.
func TestWebSocketBadSignal(t *testing.T) {
	const why = `field "signal": "SIGNOPE" is not a signal name as in signal(7), such as SIGINT, SIGTERM, SIGHUP, SIGKILL or SIGUSR1 (the SIG prefix may be left out)`
	reasons := map[string]string{
		"run":  cut("signal message: " + why),
		"exec": cut(why),
	}
	for _, what := range []string{"run", "exec"} {
		for _, channels := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/channels=%v", what, channels), func(t *testing.T) {
				m := sandboxfake.NewSignalWorkloads()
				w := openWorkload(t, signalServer(t, m), what, channels)
				w.send(`{"signal":"SIGNOPE"}`)
				_, msg, err := w.c.Read(w.ctx)
				var ce websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != 4400 || ce.Reason != reasons[what] {
					t.Fatalf("a bad signal: %q, %v; want a close with 4400 and the reason %q", msg, err, reasons[what])
				}
				if how, sigs := m.End(t), m.Signals(); how != "hang-up" || len(sigs) != 0 {
					t.Errorf("the workload ended by %s, with the signals %v; want hung up, with none", how, sigs)
				}
			})
		}
	}
}

// cut is a close reason as the agent cuts it to fit a close frame.
func cut(reason string) string {
	const maxReason = 123
	if len(reason) <= maxReason {
		return reason
	}
	return reason[:maxReason-3] + "..."
}
