package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/base64x"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
)

// Output is one message of a run's or an exec's output: a piece of
// stdout or stderr, or, last, the exit. A run or exec with
// detach_on_disconnect announces its id first, in a "start" message.
type Output struct {
	// Stream is "stdout", "stderr", "start" (first, alone, on a run or
	// exec with detach_on_disconnect), or "exit" for the last message.
	Stream string
	// Data is the piece's bytes, decoded. It is valid until the loop's
	// next iteration: every message is read and decoded into a buffer
	// that is reused for the next, so that a gigabyte of output allocates
	// nothing per piece. Copy it to keep it.
	Data []byte
	// Offset is, from RunOutput, the run's output offset of Data's first
	// byte (stdout and stderr counted together), and on the exit the
	// output's end; 0 from the other streams, which carry none.
	Offset int64
	// RunID is the run's id, on the start message and on the exit.
	RunID string
	// Exit is set on the last message only.
	Exit *Exit
}

// Exit is how a command ended.
type Exit struct {
	// Code is the exit code, 128+n when signal n ended it; -1, from
	// RunOutput, for a run that never started or was lost.
	Code int
	// Signal is, for a Code of 128+n, the signal n's name ("SIGINT").
	Signal string
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
// ending ctx, closes the stream, which hangs the command up (SIGHUP,
// then SIGKILL after a grace) unless req sets detach_on_disconnect: then
// the first message is a "start" with the run's id, and RunOutput reads
// on from where the loop stopped.
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
		var long []byte
		for {
			line, err := readLine(r, &long)
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

// RunWS is Run over the run WebSocket (GET /v1/sandboxes/{id}/run),
// for a caller that only reads: a RunSession read to its end. A refusal
// before the upgrade is an *Error with its HTTP status; one after it
// (close code 4000+status) is an *Error with that status and the close
// reason as its message. It offers the binary channel subprotocol
// (v5.channel.k8s.io), in which the output travels as raw bytes, and
// speaks the JSON messages when the agent does not select it (or with
// WithJSONWebSockets); the Outputs are the same either way.
func (c *Client) RunWS(ctx context.Context, id string, req api.RunRequest) iter.Seq2[Output, error] {
	return func(yield func(Output, error) bool) {
		s, err := c.RunSession(ctx, id, req)
		if err != nil {
			yield(Output{}, err)
			return
		}
		defer s.Close()
		for o, err := range s.Output() {
			if !yield(o, err) {
				return
			}
		}
	}
}

// RunSession is a run over the run WebSocket (GET /v1/sandboxes/{id}/run)
// that the caller can signal while it reads the output: Signal sends a
// signal; Output yields the output and the exit. A run has no stdin and
// no terminal, so there is nothing else to send: for input, use Exec.
// Signals may come from any goroutine while another one reads the
// output.
type RunSession struct {
	session
}

// RunSession starts req in sandbox id over the run WebSocket. A refusal
// before the upgrade (404, 409 ...) is an *Error; one after it, such as
// a bad request or signal name, ends Output with an *Error carrying the
// close code's status (4000+status) and reason. ctx bounds the whole
// session; Close ends it early, or ending ctx, hangs the command up
// (SIGHUP, then SIGKILL after a grace) unless req sets
// detach_on_disconnect. Like RunWS it offers the channel subprotocol and
// falls back to the JSON messages; signals are JSON text messages on
// either.
func (c *Client) RunSession(ctx context.Context, id string, req api.RunRequest) (*RunSession, error) {
	s := &RunSession{}
	if err := c.openSession(ctx, &s.session, id, "run", "RunRequest", req); err != nil {
		return nil, err
	}
	return s, nil
}

// Signal sends the command a signal by name, with or without SIG
// ("SIGINT", "TERM"), as Ctrl-C would without a terminal. An unknown
// name ends the session with a 400 *Error from Output; a signal sent
// after the command exited is dropped or fails to send.
func (s *RunSession) Signal(sig string) error {
	return s.sendJSON("SignalRequest", "signal "+sig, api.SignalRequest{Signal: api.SignalName(sig)})
}

// wsOutput yields the output messages of a run or exec WebSocket up to
// and with the exit, then an error if the socket does not close normally
// after it. Each message is read into the decoder's buffer, kept for the
// session, which the channel subprotocol's Outputs' Data point into.
func (c *Client) wsOutput(ctx context.Context, ws *websocket.Conn, dec *outputDecoder) iter.Seq2[Output, error] {
	return func(yield func(Output, error) bool) {
		channels := wschannel.Spoken(ws)
		for {
			typ, msg, err := wschannel.ReadMessage(ctx, ws, &dec.msg)
			if err != nil {
				yield(Output{}, wsEnd(ctx, err, dec.n))
				return
			}
			var o Output
			if channels {
				o, err = c.decodeChannel(dec, typ, msg)
			} else if typ != websocket.MessageText {
				err = fmt.Errorf("output message of type %v, want text", typ)
			} else {
				c.see("OutputMessage", msg)
				o, err = dec.decode(msg)
			}
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
			_, extra, err := wschannel.ReadMessage(ctx, ws, &dec.msg)
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

// decodeChannel decodes a message of the channel subprotocol: stdout or
// stderr bytes on channels 1 and 2, the start or the exit as JSON on
// channel 3.
func (c *Client) decodeChannel(dec *outputDecoder, typ websocket.MessageType, msg []byte) (Output, error) {
	if typ != websocket.MessageBinary {
		return Output{}, fmt.Errorf("%s: a text message %.200q, want binary", wschannel.Protocol, msg)
	}
	if len(msg) == 0 {
		return Output{}, fmt.Errorf("%s: an empty message, want its channel byte first", wschannel.Protocol)
	}
	switch ch, payload := msg[0], msg[1:]; ch {
	case wschannel.Stdout, wschannel.Stderr:
		if len(payload) == 0 {
			return Output{}, fmt.Errorf("%s: an output message on channel %d without data", wschannel.Protocol, ch)
		}
		dec.n++
		stream := "stdout"
		if ch == wschannel.Stderr {
			stream = "stderr"
		}
		return Output{Stream: stream, Data: payload}, nil
	case wschannel.Status:
		c.see("OutputMessage", payload)
		o, err := dec.decode(payload)
		if err == nil && o.Exit == nil && o.Stream != "start" {
			err = fmt.Errorf("%s: a %s message on the status channel, want the start or the exit", wschannel.Protocol, o.Stream)
		}
		return o, err
	default:
		return Output{}, fmt.Errorf("%s: a message on channel %d, want stdout (1), stderr (2) or status (3)", wschannel.Protocol, ch)
	}
}

// workloadProtocols are the subprotocols RunSession and Exec offer.
func (c *Client) workloadProtocols() []string {
	if c.jsonWS {
		return nil
	}
	return []string{wschannel.Protocol}
}

// dialWS opens a WebSocket on path, offering subprotocols; a refusal
// before the upgrade is an *Error. The socket closes when ctx ends, even
// while nobody reads it (a paused loop): the agent then ends the command
// at once. release closes it sooner.
func (c *Client) dialWS(ctx context.Context, path string, query url.Values, subprotocols ...string) (ws *websocket.Conn, release func(), err error) {
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
		Subprotocols:    subprotocols,
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

// readLine reads one NDJSON line, however long: in r's buffer when it
// fits, else gathered in *long, which is kept for the next long line.
// The line is valid until the next read either way.
func readLine(r *bufio.Reader, long *[]byte) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		return line, err
	}
	*long = append((*long)[:0], line...)
	for errors.Is(err, bufio.ErrBufferFull) {
		line, err = r.ReadSlice('\n')
		*long = append(*long, line...)
	}
	return *long, err
}

// outputDecoder decodes OutputMessages and checks them against the
// contract: output on stdout or stderr with data, the start with a run
// id, the exit with done and an exit code.
type outputDecoder struct {
	n    int    // output messages so far
	msg  []byte // the last WebSocket message read; reused
	data []byte // the last message's data, decoded; reused
	// offsets says every output message carries its offset (a run's
	// kept output).
	offsets bool
}

func (d *outputDecoder) decode(msg []byte) (Output, error) {
	if stream, b64, offset, ok := fastOutput(msg); ok && (offset >= 0 || !d.offsets) {
		if data, err := base64x.AppendDecode(d.data[:0], b64); err == nil && len(data) > 0 {
			d.data = data
			d.n++
			return Output{Stream: stream, Data: data, Offset: max(offset, 0)}, nil
		}
	}
	var m api.OutputMessage
	if err := json.Unmarshal(msg, &m); err != nil {
		return Output{}, fmt.Errorf("output message: %w: %.200s", err, msg)
	}
	if m.Offset != nil && *m.Offset < 0 {
		return Output{}, fmt.Errorf("output message with a negative offset: %.200s", msg)
	}
	o := Output{Stream: string(m.Stream), Offset: deref(m.Offset), RunID: deref(m.RunId)}
	switch o.Stream {
	case "stdout", "stderr":
		if m.Done != nil && *m.Done || m.ExitCode != nil {
			return Output{}, fmt.Errorf("output message with done or exit_code: %.200s", msg)
		}
		if m.Data == nil || len(*m.Data) == 0 {
			return Output{}, fmt.Errorf("output message without data: %.200s", msg)
		}
		if d.offsets && m.Offset == nil {
			return Output{}, fmt.Errorf("output message without its offset: %.200s", msg)
		}
		d.n++
		o.Data = *m.Data
		return o, nil
	case "start":
		if o.RunID == "" || m.Data != nil || m.Done != nil || m.ExitCode != nil {
			return Output{}, fmt.Errorf("start message without a run id alone: %.200s", msg)
		}
		return o, nil
	case "exit":
		if m.Done == nil || !*m.Done || m.ExitCode == nil {
			return Output{}, fmt.Errorf("exit message without done and an exit code: %.200s", msg)
		}
		if d.offsets && m.Offset == nil {
			return Output{}, fmt.Errorf("exit message without the output's end offset: %.200s", msg)
		}
		o.Exit = &Exit{Code: int(*m.ExitCode), Signal: deref(m.Signal), Message: deref(m.Message)}
		if m.Truncated != nil {
			for _, s := range *m.Truncated {
				o.Exit.Truncated = append(o.Exit.Truncated, string(s))
			}
		}
		return o, nil
	}
	return Output{}, fmt.Errorf("output message on stream %q: %.200s", m.Stream, msg)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// fastOutput recognises an output message in the agent's own encoding,
// {"stream":"stdout|stderr","data":"<base64>"} with ,"offset":N before
// the brace in a run's kept output, and returns its parts (offset -1
// when it has none): decoding it without encoding/json keeps a 100 MiB
// run cheap.
func fastOutput(msg []byte) (stream string, b64 []byte, offset int64, ok bool) {
	msg = bytes.TrimSpace(msg)
	for _, stream := range []string{"stdout", "stderr"} {
		rest, found := bytes.CutPrefix(msg, []byte(`{"stream":"`+stream+`","data":"`))
		if !found {
			continue
		}
		end := bytes.IndexByte(rest, '"')
		if end < 0 {
			return "", nil, 0, false
		}
		b64, tail := rest[:end], rest[end:]
		if string(tail) == `"}` {
			return stream, b64, -1, true
		}
		digits, found := bytes.CutPrefix(tail, []byte(`","offset":`))
		if digits, found2 := bytes.CutSuffix(digits, []byte("}")); found && found2 {
			if n, err := strconv.ParseInt(string(digits), 10, 64); err == nil && n >= 0 {
				return stream, b64, n, true
			}
		}
		return "", nil, 0, false
	}
	return "", nil, 0, false
}
