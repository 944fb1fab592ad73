package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"

	"github.com/arcbox/arcbox-agent/api"
)

// EnsureRuntime starts containerd and dockerd if needed (POST
// /v1/runtime/ensure) and returns the agent's answer. With onProgress it
// asks for the answer as NDJSON and calls onProgress with each phase of
// the start the call waits for as it ends (a RuntimeEnsureProgress with
// Phase and TookMs set, and Status on the last, PhaseEnsure), then returns
// the answer; without, the answer comes as one JSON object. A runtime
// that did not come up is an answer with status failed, not an error; a
// refusal is an *Error; a stream that ends without its answer is an error
// (the start goes on in the agent: ask again to share its outcome).
func (c *Client) EnsureRuntime(ctx context.Context, req api.RuntimeEnsureRequest, onProgress func(api.RuntimeEnsureProgress)) (api.RuntimeEnsureResponse, error) {
	r, err := api.NewEnsureRuntimeRequest(c.server, req)
	if err != nil {
		return api.RuntimeEnsureResponse{}, err
	}
	r = r.WithContext(ctx)
	if onProgress == nil {
		return readJSON[api.RuntimeEnsureResponse](c, r)
	}
	r.Header.Set("Accept", "application/x-ndjson")
	resp, err := c.do(r)
	if err != nil {
		return api.RuntimeEnsureResponse{}, err
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/x-ndjson" {
		// An agent that streams no ensure answers JSON.
		var out api.RuntimeEnsureResponse
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxWSMessage)).Decode(&out); err != nil {
			return out, fmt.Errorf("POST /v1/runtime/ensure: the answer: %w", err)
		}
		return out, nil
	}
	return c.readEnsureStream(ctx, bufio.NewReader(resp.Body), onProgress)
}

// readEnsureStream reads a streamed ensure: phase lines, each given to
// onProgress, until the result line.
func (c *Client) readEnsureStream(ctx context.Context, r *bufio.Reader, onProgress func(api.RuntimeEnsureProgress)) (api.RuntimeEnsureResponse, error) {
	const schema = "RuntimeEnsureProgress"
	n := 0 // phases so far
	var long []byte
	for {
		line, err := readLine(r, &long)
		if err != nil {
			if ctx.Err() != nil {
				return api.RuntimeEnsureResponse{}, ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return api.RuntimeEnsureResponse{}, fmt.Errorf("POST /v1/runtime/ensure: the stream ended without the answer after %d phases (the start goes on in the agent): %w", n, err)
		}
		if line = bytes.TrimSpace(line); len(line) == 0 {
			continue
		}
		c.see(schema, line)
		var p api.RuntimeEnsureProgress
		if err := json.Unmarshal(line, &p); err != nil {
			return api.RuntimeEnsureResponse{}, fmt.Errorf("%s message: %w: %.200s", schema, err, line)
		}
		switch {
		case p.Result != nil:
			return *p.Result, nil
		case p.Phase == nil || p.TookMs == nil:
			return api.RuntimeEnsureResponse{}, fmt.Errorf("%s message with neither a phase and its time nor a result: %.200s", schema, line)
		}
		n++
		onProgress(p)
	}
}
