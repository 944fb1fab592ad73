package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"

	"github.com/arcbox/arcbox-agent/api"
)

// LogsOptions says how much of a runtime daemon's log RuntimeLogs
// yields.
type LogsOptions struct {
	// Tail, when above 0, starts at the log's last Tail lines.
	Tail int
	// Follow keeps yielding lines as the daemon writes them, until ctx
	// ends, the loop breaks or the agent ends the stream.
	Follow bool
}

// RuntimeLogs yields the lines of a runtime daemon's log ("containerd"
// or "dockerd"; GET /v1/runtime/logs), without their newlines; a last
// line the daemon has not ended yet comes as it is. An unknown service,
// or a log not written yet, is an *Error with 404.
func (c *Client) RuntimeLogs(ctx context.Context, service string, o LogsOptions) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		params := api.GetRuntimeLogsParams{Service: service}
		if o.Tail > 0 {
			params.Tail = &o.Tail
		}
		if o.Follow {
			params.Follow = &o.Follow
		}
		req, err := api.NewGetRuntimeLogsRequest(c.server, &params)
		if err != nil {
			yield("", err)
			return
		}
		resp, err := c.do(req.WithContext(ctx))
		if err != nil {
			yield("", err)
			return
		}
		defer resp.Body.Close()
		r := bufio.NewReader(resp.Body)
		for {
			line, err := r.ReadString('\n')
			if line != "" && !yield(strings.TrimSuffix(line, "\n"), nil) {
				return
			}
			switch {
			case errors.Is(err, io.EOF):
				return
			case err != nil && ctx.Err() != nil:
				yield("", ctx.Err())
				return
			case err != nil:
				yield("", fmt.Errorf("the %s log: %w", service, err))
				return
			}
		}
	}
}
