package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
)

// Output is one message of a run's or an exec's output: a piece of
// stdout or stderr, or, last, the exit.
type Output struct {
	// Stream is "stdout", "stderr", or "exit" for the last message.
	Stream string
	// Data is the piece's bytes, decoded; the caller may keep it.
	Data []byte
	// Exit is set on the last message only.
	Exit *Exit
}

// Exit is how a command ended.
type Exit struct {
	Code int
	// Truncated names the streams whose output was cut (a background
	// child kept writing after the command exited); Message says why.
	Truncated []string
	Message   string
}

// maxWSMessage bounds a WebSocket message the client takes: the agent's
// output messages are far smaller.
const maxWSMessage = 16 << 20

// Run runs a command in sandbox id (POST /v1/sandboxes/{id}/run) and
// yields its output as it comes, the exit last. A refusal (404, 409 ...)
// is an *Error; a stream that ends without an exit message, or that
// breaks the contract, is an error too. Breaking out of the loop, or
// ending ctx, closes the stream, which kills the command.
//
// Streams are iter.Seq2 values rather than an iterator type with
// Next/Err/Close: a range loop cannot forget to close or to check the
// error, and the stream lives exactly as long as the loop.
func (c *Client) Run(ctx context.Context, id string, req api.RunRequest) iter.Seq2[Output, error] {
	return func(yield func(Output, error) bool) {
		hreq, err := api.NewRunInSandboxRequest(c.server, id, req)
		if err != nil {
			yield(Output{}, err)
			return
		}
		resp, err := c.do(hreq.WithContext(ctx))
		if err != nil {
			yield(Output{}, err)
			return
		}
		defer resp.Body.Close()
		var dec outputDecoder
		r := bufio.NewReaderSize(resp.Body, 1<<20)
		for {
			line, err := readLine(r)
			if err != nil {
				// A line the end of the stream cut short is no message.
				yield(Output{}, streamEnd(ctx, "run", err, dec.n))
				return
			}
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			c.see("OutputMessage", line)
			o, derr := dec.decode(line)
			if derr != nil {
				yield(Output{}, derr)
				return
			}
			if o.Exit != nil {
				// The exit is the last line: anything after it breaks the
				// contract.
				rest, rerr := io.ReadAll(r)
				if !yield(o, nil) {
					return
				}
				switch {
				case rerr != nil:
					yield(Output{}, fmt.Errorf("run: after the exit message: %w", rerr))
				case len(bytes.TrimSpace(rest)) > 0:
					yield(Output{}, fmt.Errorf("run: after the exit message: %.200q, want the end of the stream", rest))
				}
				return
			}
			if !yield(o, nil) {
				return
			}
		}
	}
}

// RunWS is Run over the run WebSocket (GET /v1/sandboxes/{id}/run). A
// refusal before the upgrade is an *Error with its HTTP status; one after
// it (close code 4000+status) is an *Error with that status and the close
// reason as its message.
func (c *Client) RunWS(ctx context.Context, id string, req api.RunRequest) iter.Seq2[Output, error] {
	return func(yield func(Output, error) bool) {
		ws, release, err := c.dialWS(ctx, "/v1/sandboxes/"+url.PathEscape(id)+"/run", nil)
		if err != nil {
			yield(Output{}, err)
			return
		}
		defer release()
		body, err := json.Marshal(req)
		if err == nil {
			err = ws.Write(ctx, websocket.MessageText, body)
		}
		if err != nil {
			yield(Output{}, fmt.Errorf("run: send the request: %w", err))
			return
		}
		var dec outputDecoder
		for o, err := range c.wsOutput(ctx, ws, &dec) {
			if !yield(o, err) {
				return
			}
		}
	}
}

// wsOutput yields the output messages of a run or exec WebSocket up to
// and with the exit, then an error if the socket does not close normally
// after it.
func (c *Client) wsOutput(ctx context.Context, ws *websocket.Conn, dec *outputDecoder) iter.Seq2[Output, error] {
	return func(yield func(Output, error) bool) {
		for {
			typ, msg, err := ws.Read(ctx)
			if err != nil {
				yield(Output{}, wsEnd(ctx, err, dec.n))
				return
			}
			if typ != websocket.MessageText {
				yield(Output{}, fmt.Errorf("output message of type %v, want text", typ))
				return
			}
			c.see("OutputMessage", msg)
			o, err := dec.decode(msg)
			if err != nil {
				yield(Output{}, err)
				return
			}
			if o.Exit == nil {
				if !yield(o, nil) {
					return
				}
				continue
			}
			_, extra, err := ws.Read(ctx)
			if !yield(o, nil) {
				return
			}
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				yield(Output{}, fmt.Errorf("after the exit message: %.200q, %w; want a normal close", extra, err))
			}
			return
		}
	}
}

// dialWS opens a WebSocket on path; a refusal before the upgrade is an
// *Error. The socket closes when ctx ends, even while nobody reads it
// (a paused loop): the agent then ends the command at once. release
// closes it sooner.
func (c *Client) dialWS(ctx context.Context, path string, query url.Values) (ws *websocket.Conn, release func(), err error) {
	u := "ws" + c.server[len("http"):] + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	h := http.Header{}
	c.setHeaders(h)
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient:      c.hc,
		HTTPHeader:      h,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			defer resp.Body.Close()
			return nil, nil, errorFrom(resp)
		}
		return nil, nil, fmt.Errorf("WebSocket %s: %w", path, err)
	}
	ws.SetReadLimit(maxWSMessage)
	stop := context.AfterFunc(ctx, func() { _ = ws.CloseNow() })
	return ws, func() {
		stop()
		_ = ws.CloseNow()
	}, nil
}

// wsEnd is the error of a WebSocket that ended before its last message:
// a close with 4000+status is that status's *Error.
func wsEnd(ctx context.Context, err error, n int) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) && ce.Code >= 4000 && ce.Code <= 4999 {
		return &Error{Code: int(ce.Code) - 4000, Message: ce.Reason, Closed: true}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("the stream ended without an exit message after %d messages: %w", n, err)
}

// streamEnd is the error of an NDJSON stream that ended before its exit
// message.
func streamEnd(ctx context.Context, what string, err error, n int) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%s: the stream ended without an exit message after %d messages: %w", what, n, err)
}

// readLine reads one NDJSON line, however long.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		return line, err
	}
	long := append([]byte(nil), line...)
	for errors.Is(err, bufio.ErrBufferFull) {
		line, err = r.ReadSlice('\n')
		long = append(long, line...)
	}
	return long, err
}

// outputDecoder decodes OutputMessages and checks them against the
// contract: output on stdout or stderr with data, the exit with done and
// an exit code.
type outputDecoder struct {
	n int // output messages so far
}

func (d *outputDecoder) decode(msg []byte) (Output, error) {
	if stream, b64, ok := fastOutput(msg); ok {
		if data, err := base64.StdEncoding.AppendDecode(nil, b64); err == nil && len(data) > 0 {
			d.n++
			return Output{Stream: stream, Data: data}, nil
		}
	}
	var m api.OutputMessage
	if err := json.Unmarshal(msg, &m); err != nil {
		return Output{}, fmt.Errorf("output message: %w: %.200s", err, msg)
	}
	switch string(m.Stream) {
	case "stdout", "stderr":
		if m.Done != nil && *m.Done || m.ExitCode != nil {
			return Output{}, fmt.Errorf("output message with done or exit_code: %.200s", msg)
		}
		if m.Data == nil || len(*m.Data) == 0 {
			return Output{}, fmt.Errorf("output message without data: %.200s", msg)
		}
		d.n++
		return Output{Stream: string(m.Stream), Data: *m.Data}, nil
	case "exit":
		if m.Done == nil || !*m.Done || m.ExitCode == nil {
			return Output{}, fmt.Errorf("exit message without done and an exit code: %.200s", msg)
		}
		x := &Exit{Code: int(*m.ExitCode)}
		if m.Truncated != nil {
			for _, s := range *m.Truncated {
				x.Truncated = append(x.Truncated, string(s))
			}
		}
		if m.Message != nil {
			x.Message = *m.Message
		}
		return Output{Stream: string(m.Stream), Exit: x}, nil
	}
	return Output{}, fmt.Errorf("output message on stream %q: %.200s", m.Stream, msg)
}

// fastOutput recognises an output message in the agent's own encoding,
// {"stream":"stdout|stderr","data":"<base64>"}, and returns its parts:
// decoding it without encoding/json keeps a 100 MiB run cheap.
func fastOutput(msg []byte) (stream string, b64 []byte, ok bool) {
	msg = bytes.TrimSpace(msg)
	for _, stream := range []string{"stdout", "stderr"} {
		if rest, found := bytes.CutPrefix(msg, []byte(`{"stream":"`+stream+`","data":"`)); found {
			if b64, found := bytes.CutSuffix(rest, []byte(`"}`)); found {
				return stream, b64, true
			}
		}
	}
	return "", nil, false
}
