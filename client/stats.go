package client

import (
	"context"
	"encoding/json"
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

// SandboxStats reads sandbox id's CPU, memory, pids, IO and pressure
// once (GET /v1/sandboxes/{id}/stats). A sandbox whose init does not run
// (not ready or running) is a 409 *Error.
func (c *Client) SandboxStats(ctx context.Context, id string) (api.SandboxStats, error) {
	req, err := api.NewGetSandboxStatsRequest(c.server, id, &api.GetSandboxStatsParams{})
	if err != nil {
		return api.SandboxStats{}, err
	}
	return readJSON[api.SandboxStats](c, req.WithContext(ctx))
}

// WatchSandboxStats yields sandbox id's stats at once and then every
// interval (100ms to 1h, whole milliseconds). It ends when the sandbox
// stops or is removed, when the agent shuts down, when the loop breaks,
// or when ctx ends (yielding ctx's error); a refusal is an *Error, a
// connection that breaks an error. It does not reconnect: each message
// is a whole reading, and the next call starts afresh.
func (c *Client) WatchSandboxStats(ctx context.Context, id string, interval time.Duration) iter.Seq2[api.SandboxStats, error] {
	return func(yield func(api.SandboxStats, error) bool) {
		every, err := statsInterval(interval)
		if err != nil {
			yield(api.SandboxStats{}, err)
			return
		}
		watchNDJSON(ctx, c, "/v1/sandboxes/"+url.PathEscape(id)+"/stats", every, "SandboxStats", yield)
	}
}

// GuestStats reads the guest's memory, load, pressure and data volume
// space once (GET /v1/stats).
func (c *Client) GuestStats(ctx context.Context) (api.GuestStats, error) {
	req, err := api.NewGetGuestStatsRequest(c.server, &api.GetGuestStatsParams{})
	if err != nil {
		return api.GuestStats{}, err
	}
	return readJSON[api.GuestStats](c, req.WithContext(ctx))
}

// WatchGuestStats yields the guest's stats at once and then every
// interval, as WatchSandboxStats does, until ctx ends, the loop breaks or
// the agent shuts down.
func (c *Client) WatchGuestStats(ctx context.Context, interval time.Duration) iter.Seq2[api.GuestStats, error] {
	return func(yield func(api.GuestStats, error) bool) {
		every, err := statsInterval(interval)
		if err != nil {
			yield(api.GuestStats{}, err)
			return
		}
		watchNDJSON(ctx, c, "/v1/stats", every, "GuestStats", yield)
	}
}

// statsInterval is d as ?interval= takes it: a whole number and the
// largest unit that divides it.
func statsInterval(d time.Duration) (string, error) {
	if d < 100*time.Millisecond || d > time.Hour || d%time.Millisecond != 0 {
		return "", fmt.Errorf("stats interval %v: want whole milliseconds from 100ms to 1h", d)
	}
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if d%u.d == 0 {
			return strconv.FormatInt(int64(d/u.d), 10) + u.name, nil
		}
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms", nil
}

// readJSON sends req and decodes its JSON answer.
func readJSON[T any](c *Client, req *http.Request) (T, error) {
	var v T
	resp, err := c.do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxWSMessage)).Decode(&v); err != nil {
		return v, fmt.Errorf("%s %s: the answer: %w", req.Method, req.URL.Path, err)
	}
	return v, nil
}

// watchNDJSON asks path for stats every interval and yields each line of
// its NDJSON answer, decoded, until its body ends.
func watchNDJSON[T any](ctx context.Context, c *Client, path, interval, schema string, yield func(T, error) bool) {
	var zero T
	read, closeConn, err := c.openMessages(ctx, path, url.Values{"interval": {interval}}, false, schema)
	if err != nil {
		yield(zero, err)
		return
	}
	defer closeConn()
	for {
		msg, err := read()
		switch {
		case errors.Is(err, io.EOF):
			return
		case err != nil && ctx.Err() != nil:
			yield(zero, ctx.Err())
			return
		case err != nil:
			yield(zero, fmt.Errorf("the %s stream broke: %w", schema, err))
			return
		}
		c.see(schema, msg)
		var v T
		if err := json.Unmarshal(msg, &v); err != nil {
			yield(zero, fmt.Errorf("%s message: %w: %.200s", schema, err, msg))
			return
		}
		if !yield(v, nil) {
			return
		}
	}
}
