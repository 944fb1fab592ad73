package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/arcbox/arcbox-agent/api"
)

// StartRunOptions says how StartRun starts a run.
type StartRunOptions struct {
	// Stdin keeps the run's stdin open for WriteRunStdin; without it the
	// run reads the end of its input at once.
	Stdin bool
}

// StartRun starts a detached run in sandbox id (POST
// /v1/sandboxes/{id}/runs) and returns it once its process has started:
// it goes on without any client, its output kept to be read with
// RunOutput. Past the sandbox's cap of runs in progress it is a 409
// *Error.
func (c *Client) StartRun(ctx context.Context, id string, req api.RunRequest, o StartRunOptions) (api.RunInfo, error) {
	var params api.StartRunParams
	if o.Stdin {
		params.Stdin = &o.Stdin
	}
	r, err := Check(c.api.StartRunWithResponse(ctx, id, &params, req))
	if err != nil {
		return api.RunInfo{}, err
	}
	return jsonBody(r.JSON201, r.HTTPResponse)
}

// Runs lists sandbox id's runs, in progress and ended, in the order they
// started.
func (c *Client) Runs(ctx context.Context, id string) ([]api.RunInfo, error) {
	r, err := Check(c.api.ListRunsWithResponse(ctx, id))
	if err != nil {
		return nil, err
	}
	list, err := jsonBody(r.JSON200, r.HTTPResponse)
	return list.Runs, err
}

// GetRun returns one run of sandbox id; a run of another sandbox is a
// 404 *Error.
func (c *Client) GetRun(ctx context.Context, id, runID string) (api.RunInfo, error) {
	r, err := Check(c.api.GetRunWithResponse(ctx, id, runID))
	if err != nil {
		return api.RunInfo{}, err
	}
	return jsonBody(r.JSON200, r.HTTPResponse)
}

// SignalRun sends a run's process a signal by name, with or without SIG
// ("SIGINT", "TERM"), and returns the run as it is then. An unknown name
// is a 400 *Error, a run that has ended a 409.
func (c *Client) SignalRun(ctx context.Context, id, runID, signal string) (api.RunInfo, error) {
	r, err := Check(c.api.SignalRunWithResponse(ctx, id, runID, api.SignalRequest{Signal: api.SignalName(signal)}))
	if err != nil {
		return api.RunInfo{}, err
	}
	return jsonBody(r.JSON200, r.HTTPResponse)
}

// maxStdinRequest is how many bytes one stdin request carries: the
// agent takes JSON bodies of 1 MiB, and base64 makes 4 bytes of 3.
const maxStdinRequest = 512 << 10

// WriteRunStdin writes data to the stdin of a run started with
// StartRunOptions.Stdin, and closes it after when closeStdin is set. It
// returns once the process has taken the bytes. Data over 512 KiB goes
// in several requests, in order; if one fails, the bytes before it were
// written and the agent has closed the stdin (it cannot know how much
// of the failed request the process took).
func (c *Client) WriteRunStdin(ctx context.Context, id, runID string, data []byte, closeStdin bool) error {
	for {
		n := min(len(data), maxStdinRequest)
		req := api.StdinRequest{}
		if n > 0 {
			piece := data[:n]
			req.Data = &piece
		}
		last := n == len(data)
		if last && closeStdin {
			req.Close = &closeStdin
		}
		if _, err := Check(c.api.WriteRunStdinWithResponse(ctx, id, runID, req)); err != nil {
			return err
		}
		if last {
			return nil
		}
		data = data[n:]
	}
}

// jsonBody is the decoded body of a 2xx answer of the generated client,
// or an error when the agent sent none.
func jsonBody[T any](v *T, resp *http.Response) (T, error) {
	if v == nil {
		var zero T
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return zero, fmt.Errorf("the agent answered %d without the JSON body the contract gives it", status)
	}
	return *v, nil
}

// RunOutputOptions says where RunOutput starts and how it reconnects.
type RunOutputOptions struct {
	// Offset is the output offset to start from (0: the start). Resuming
	// after a message at offset o with n bytes is Offset o+n.
	Offset int64
	// Follow goes on as the run writes, until its exit. Without it the
	// output is what is kept now, then the exit if the run has ended.
	Follow bool
	// WebSocket reads over a WebSocket instead of NDJSON.
	WebSocket bool
	// MinBackoff and MaxBackoff bound the wait before a reconnect, as
	// EventsOptions's do (0: 100 ms and 5 s). The wait only delays: which
	// bytes are yielded is decided by offsets alone.
	MinBackoff, MaxBackoff time.Duration
	// OnReconnect, when set, is called with why a connection ended
	// before each try to reconnect.
	OnReconnect func(err error)
}

// OutputGoneError is the answer to a read of a run's output from an
// offset whose bytes were dropped to keep the run within its bound
// (410): output was lost. Reading again from First accepts the gap.
type OutputGoneError struct {
	First int64 // the first offset the agent still keeps
	Err   *Error
}

func (e *OutputGoneError) Unwrap() error { return e.Err }

func (e *OutputGoneError) Error() string {
	return fmt.Sprintf("%v (the first byte kept is at offset %d)", e.Err, e.First)
}

// RunOutput yields a run's kept output (GET
// /v1/sandboxes/{id}/runs/{run}/output) from o.Offset, each piece with
// its offset, and the exit last once the run has ended (its Offset the
// output's end). When the connection drops (the agent restarts, the VM
// pauses, the reader fell behind), it reconnects from the offset after
// the last byte it yielded, so no byte is lost or yielded twice. It ends
// after the exit, after what is kept now without Follow, when the loop
// breaks, when ctx ends (yielding ctx's error), or with an answer that
// reconnecting cannot change: an *Error for a 4xx (an *OutputGoneError
// when the bytes it needs were dropped meanwhile), or an error for a
// stream that breaks the contract (a gap in the offsets).
func (c *Client) RunOutput(ctx context.Context, id, runID string, o RunOutputOptions) iter.Seq2[Output, error] {
	return func(yield func(Output, error) bool) {
		if o.Offset < 0 {
			yield(Output{}, fmt.Errorf("run output: offset %d is negative", o.Offset))
			return
		}
		next := o.Offset
		b := newBackoff(o.MinBackoff, o.MaxBackoff)
		for {
			yielded, why := c.readOutput(ctx, id, runID, o, &next, yield)
			if why == nil { // the iteration is over
				return
			}
			if ctx.Err() != nil {
				yield(Output{}, ctx.Err())
				return
			}
			var e *Error
			// A 4410 close is a reader that fell behind: asking again says
			// how far (a 410 with the first offset kept).
			if errors.As(why, &e) && e.Code < 500 && (!e.Closed || e.Code != http.StatusGone) {
				yield(Output{}, why)
				return
			}
			if yielded {
				b.reset()
			}
			if o.OnReconnect != nil {
				o.OnReconnect(why)
			}
			if !b.sleep(ctx) {
				yield(Output{}, ctx.Err())
				return
			}
		}
	}
}

// readOutput makes one connection and yields its output from *next on,
// moving *next along. It returns a nil error when the iteration is over,
// else why the connection ended (yielded says whether any byte came).
func (c *Client) readOutput(ctx context.Context, id, runID string, o RunOutputOptions, next *int64, yield func(Output, error) bool) (yielded bool, err error) {
	q := url.Values{"offset": {strconv.FormatInt(*next, 10)}}
	if o.Follow {
		q.Set("follow", "true")
	}
	path := "/v1/sandboxes/" + url.PathEscape(id) + "/runs/" + url.PathEscape(runID) + "/output"
	read, closeConn, err := c.openMessages(ctx, path, q, o.WebSocket, "output")
	if err != nil {
		return false, outputGone(err)
	}
	defer closeConn()
	dec := outputDecoder{offsets: true}
	for {
		msg, err := read()
		switch {
		case errors.Is(err, io.EOF) && !o.Follow:
			return yielded, nil // all that is kept now; the run goes on
		case errors.Is(err, io.EOF):
			// Following, the agent ends the stream early only for a reader
			// that fell behind, or when it shuts down.
			return yielded, errors.New("the output stream ended before the exit")
		case err != nil:
			return yielded, fmt.Errorf("the output stream broke: %w", err)
		}
		c.see("OutputMessage", msg)
		out, err := dec.decode(msg)
		if err == nil && out.Offset > *next {
			err = fmt.Errorf("run output: a message at offset %d after the bytes up to %d: the bytes between were lost", out.Offset, *next)
		}
		if err == nil && out.Stream == "start" {
			err = fmt.Errorf("run output: a start message: %.200s", msg)
		}
		if err != nil {
			// The agent broke the contract: reconnecting would not help.
			yield(Output{}, err)
			return yielded, nil
		}
		if out.Exit != nil {
			if out.Offset != *next {
				yield(Output{}, fmt.Errorf("run output: the exit says the output ends at %d, but the bytes came up to %d", out.Offset, *next))
			} else {
				yield(out, nil)
			}
			return true, nil
		}
		end := out.Offset + int64(len(out.Data))
		if end <= *next {
			continue // yielded before the reconnect
		}
		out.Data = out.Data[*next-out.Offset:]
		out.Offset = *next
		*next = end
		yielded = true
		if !yield(out, nil) {
			return true, nil
		}
	}
}

// outputGone makes a 410's *Error an *OutputGoneError, read from the
// X-Output-First-Offset header that errorFrom kept.
func outputGone(err error) error {
	var e *Error
	if !errors.As(err, &e) || e.Code != http.StatusGone || e.Closed {
		return err
	}
	g := &OutputGoneError{Err: e}
	if e.header != nil {
		g.First, _ = strconv.ParseInt(e.header.Get("X-Output-First-Offset"), 10, 64)
	}
	return g
}
