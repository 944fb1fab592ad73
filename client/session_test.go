package client_test

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/sandboxfake"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// TestRunSessionMessages: a RunSession sends the run request, then each
// signal as a JSON text message ({"signal":...}), on the JSON protocol
// and on the channel subprotocol alike, and reads the output to the exit.
func TestRunSessionMessages(t *testing.T) {
	type msg struct {
		typ  websocket.MessageType
		data string
	}
	for _, jsonOnly := range []bool{false, true} {
		var offered []string
		got := make(chan msg, 3)
		h := channelHandler(t, &offered, func(ctx context.Context, c *websocket.Conn) {
			for range 3 {
				typ, m, err := c.Read(ctx)
				if err != nil {
					return
				}
				got <- msg{typ, string(m)}
			}
			exit := []byte(`{"stream":"exit","done":true,"exit_code":130,"signal":"SIGINT"}`)
			if c.Subprotocol() == channelProtocol {
				_ = c.Write(ctx, websocket.MessageBinary, append([]byte{3}, exit...))
			} else {
				_ = c.Write(ctx, websocket.MessageText, exit)
			}
			_ = c.Close(websocket.StatusNormalClosure, "")
		})
		var opts []client.Option
		if jsonOnly {
			opts = append(opts, client.WithJSONWebSockets())
		}
		c := serve(t, h, opts...)
		s, err := c.RunSession(testCtx(t), "box", api.RunRequest{Cmd: []string{"sleep", "9"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, sig := range []string{"INT", "SIGTERM"} {
			if err := s.Signal(sig); err != nil {
				t.Fatalf("signal %s: %v", sig, err)
			}
		}
		exit, err := s.Wait()
		if err != nil || exit.Code != 130 || exit.Signal != "SIGINT" {
			t.Errorf("json only %v: wait: %+v, %v", jsonOnly, exit, err)
		}
		if exit, err := s.Wait(); err != nil || exit.Code != 130 {
			t.Errorf("json only %v: wait again: %+v, %v", jsonOnly, exit, err)
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
		want := []msg{
			{websocket.MessageText, `{"cmd":["sleep","9"]}`},
			{websocket.MessageText, `{"signal":"INT"}`},
			{websocket.MessageText, `{"signal":"SIGTERM"}`},
		}
		if sent := []msg{<-got, <-got, <-got}; !slices.Equal(sent, want) {
			t.Errorf("json only %v: the server got %v, want %v", jsonOnly, sent, want)
		}
		if jsonOnly != (len(offered) == 0) {
			t.Errorf("json only %v: the client offered %q", jsonOnly, offered)
		}
	}
}

// TestRunSessionRefused: a refusal before the upgrade is RunSession's
// *Error; one after it ends Output with the close's *Error.
func TestRunSessionRefused(t *testing.T) {
	refused := serve(t, wsHandlerOr404(t))
	ctx := testCtx(t)
	s, err := refused.RunSession(ctx, "nope", api.RunRequest{Cmd: []string{"x"}})
	var e *client.Error
	if s != nil || !errors.As(err, &e) || e.Code != 404 || e.Closed {
		t.Errorf("a refused upgrade: %v, %#v; want no session and a 404 *Error", s, err)
	}
	s, err = refused.RunSession(ctx, "busy", api.RunRequest{Cmd: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if exit, err := s.Wait(); exit != nil || !errors.As(err, &e) || e.Code != 409 || !e.Closed || e.Message != "another run holds the sandbox" {
		t.Errorf("a close with 4409: %+v, %#v; want a 409 *Error", exit, err)
	}
	if _, err := s.Wait(); !errors.As(err, &e) || e.Code != 409 {
		t.Errorf("wait again: %#v, want the same 409", err)
	}
}

// wsHandlerOr404 refuses sandbox "nope" before the upgrade and closes
// any other's WebSocket with 4409 after the first message.
func wsHandlerOr404(t *testing.T) http.HandlerFunc {
	ws := wsHandler(t, func(ctx context.Context, c *websocket.Conn) {
		_, _, _ = c.Read(ctx)
		_ = c.Close(4409, "another run holds the sandbox")
	})
	return func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/nope/") {
			writeError(w, http.StatusNotFound, `no sandbox "nope"`)
			return
		}
		ws.ServeHTTP(w, r)
	}
}

// signaller is a RunSession or an ExecSession.
type signaller interface {
	Signal(sig string) error
	Output() iter.Seq2[client.Output, error]
	Close() error
}

// openSignaller opens a RunSession (what "run") or an ExecSession of
// sleep 9 in sandbox "box" on the agent's handlers over m, on the channel
// subprotocol or, with jsonOnly, the JSON messages, and checks that the
// agent spoke the protocol asked.
func openSignaller(t *testing.T, m *sandboxfake.SignalWorkloads, what string, jsonOnly bool) signaller {
	t.Helper()
	var mu sync.Mutex
	var selected []string // each 101's Sec-WebSocket-Protocol
	opts := []client.Option{client.WithTransport(func(base http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := base.RoundTrip(r)
			if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
				mu.Lock()
				selected = append(selected, resp.Header.Get("Sec-WebSocket-Protocol"))
				mu.Unlock()
			}
			return resp, err
		})
	})}
	if jsonOnly {
		opts = append(opts, client.WithJSONWebSockets())
	}
	c := serve(t, sandboxfake.Handler(m), opts...)
	ctx := testCtx(t)
	var s signaller
	var err error
	if what == "run" {
		s, err = c.RunSession(ctx, "box", api.RunRequest{Cmd: []string{"sleep", "9"}})
	} else {
		s, err = c.Exec(ctx, "box", api.ExecInit{Cmd: []string{"sleep", "9"}})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	want := channelProtocol
	if jsonOnly {
		want = ""
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(selected, []string{want}) {
		t.Errorf("the agent selected the subprotocols %q, want %q", selected, want)
	}
	return s
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestSessionSignalReachesAgent: a signal sent with RunSession.Signal or
// ExecSession.Signal reaches the agent's handlers, on both protocols, and
// arrives at the workload as the signal named (either spelling); the
// exit names it. An unknown name ends the output with the agent's 4400,
// a 400 *Error naming the field, and reaches nothing.
func TestSessionSignalReachesAgent(t *testing.T) {
	for _, what := range []string{"run", "exec"} {
		for _, jsonOnly := range []bool{false, true} {
			for _, tc := range []struct {
				name string
				want sandbox.Signal // 0: refused
			}{{"INT", 2}, {"SIGTERM", 15}, {"SIGNOPE", 0}} {
				t.Run(fmt.Sprintf("%s/json=%v/%s", what, jsonOnly, tc.name), func(t *testing.T) {
					m := sandboxfake.NewSignalWorkloads()
					s := openSignaller(t, m, what, jsonOnly)
					var exit *client.Exit
					var last error
					for o, err := range s.Output() {
						switch {
						case err != nil:
							last = err
						case o.Exit != nil:
							exit = o.Exit
						case string(o.Data) == "ready\n":
							if err := s.Signal(tc.name); err != nil {
								t.Fatal(err)
							}
						default:
							t.Errorf("output %+v", o)
						}
					}
					got := m.Signals()
					if tc.want == 0 {
						var e *client.Error
						if !errors.As(last, &e) || e.Code != http.StatusBadRequest || !e.Closed ||
							!strings.Contains(e.Message, `"signal"`) || !strings.Contains(e.Message, tc.name) {
							t.Errorf("an unknown signal: %#v, want a 400 *Error naming the field and the name", last)
						}
						if len(got) != 0 {
							t.Errorf("the workload got %v", got)
						}
						return
					}
					if last != nil {
						t.Fatal(last)
					}
					if !slices.Equal(got, []sandbox.Signal{tc.want}) {
						t.Errorf("the workload got %v, want %v", got, tc.want)
					}
					if exit == nil || exit.Code != 128+int(tc.want) || exit.Signal != "SIG"+strings.TrimPrefix(tc.name, "SIG") {
						t.Errorf("exit %+v, want %d and its name", exit, 128+int(tc.want))
					}
				})
			}
		}
	}
}
