// Package client is a Go SDK for the arcbox agent's HTTP/JSON API. New
// connects to any of the agent's listeners (unix://, tcp:// or vsock://);
// API gives the generated typed client for the plain JSON operations;
// Run, RunWS, RunOutput, Events, RuntimeLogs and WatchSandboxStats give
// the streams as Go iterators, and RunSession and Exec the run and exec
// WebSockets as sessions that also send, so a caller never decodes a
// stream by hand; StartRun and the other run methods, ReadFile,
// WriteFile and the other file methods, and the stats methods wrap the
// rest of the workload API. Every answer outside 2xx is an *Error.
package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agentaddr"
)

// Client talks to one agent. It is safe for concurrent use.
type Client struct {
	server  string // the base URL requests are made against
	hc      *http.Client
	api     *api.ClientWithResponses
	token   string
	traceID string
	observe func(schema string, msg []byte)
	jsonWS  bool // RunSession (RunWS) and Exec do not offer the channel subprotocol
}

// Option configures New.
type Option func(*options)

type options struct {
	token   string
	traceID string
	hc      *http.Client
	wraps   []func(http.RoundTripper) http.RoundTripper
	observe func(schema string, msg []byte)
	jsonWS  bool
}

// WithToken sends token as the bearer token of every request, as a TCP
// listener wants. It never appears in an error.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithTraceID sends id as the X-Trace-Id of every request, so the
// agent's log lines about them carry it.
func WithTraceID(id string) Option { return func(o *options) { o.traceID = id } }

// WithHTTPClient makes requests with hc (a copy of it). A nil Transport
// means the one New makes to reach the address. hc's Timeout bounds whole
// exchanges, streams included: leave it 0 and use contexts for streams.
func WithHTTPClient(hc *http.Client) Option { return func(o *options) { o.hc = hc } }

// WithTransport wraps the transport that reaches the address, to add
// checks, metrics or logging around every exchange. Each WithTransport
// wraps what the ones before it made.
func WithTransport(wrap func(base http.RoundTripper) http.RoundTripper) Option {
	return func(o *options) { o.wraps = append(o.wraps, wrap) }
}

// WithObserver calls observe with every stream message as it comes or
// goes, before it is decoded: schema is the name of its schema in
// openapi.yaml ("OutputMessage", "Event", "ExecClientMessage"). It is for
// contract tests and debugging, and must not keep msg.
func WithObserver(observe func(schema string, msg []byte)) Option {
	return func(o *options) { o.observe = observe }
}

// WithJSONWebSockets makes RunSession, RunWS and Exec speak the JSON messages (bytes
// in base64) even to an agent that speaks the binary channel subprotocol,
// as one without it would: for a proxy on the way that passes only text
// messages, or to compare the two.
func WithJSONWebSockets() Option { return func(o *options) { o.jsonWS = true } }

// New returns a client of the agent at addr: unix:///path/to/socket,
// tcp://host:port or vsock://CID:PORT.
func New(addr string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	server, dial, err := agentaddr.Parse(addr)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{}
	if o.hc != nil {
		*hc = *o.hc
	}
	if hc.Transport == nil {
		// No proxy: the agent is on this machine or behind a local bridge.
		hc.Transport = &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 16}
	}
	for _, wrap := range o.wraps {
		hc.Transport = wrap(hc.Transport)
	}
	c := &Client{server: server, hc: hc, token: o.token, traceID: o.traceID, observe: o.observe, jsonWS: o.jsonWS}
	c.api, err = api.NewClientWithResponses(server, api.WithHTTPClient(hc), api.WithRequestEditorFn(c.edit))
	if err != nil {
		return nil, fmt.Errorf("client for %q: %w", addr, err)
	}
	return c, nil
}

// API is the generated client for the plain JSON operations; its answers
// outside 2xx become an *Error with Check. Streams have no *WithResponse
// method there: use this package's methods (Run, RunOutput, Events,
// ReadFile, WatchSandboxStats ...).
func (c *Client) API() *api.ClientWithResponses { return c.api }

// HTTPClient is the client requests are made with.
func (c *Client) HTTPClient() *http.Client { return c.hc }

// edit adds the token and the trace id to a request.
func (c *Client) edit(_ context.Context, req *http.Request) error {
	c.setHeaders(req.Header)
	return nil
}

func (c *Client) setHeaders(h http.Header) {
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	if c.traceID != "" {
		h.Set("X-Trace-Id", c.traceID)
	}
}

// newRequest makes a request for path (with its query) on the agent.
func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values) (*http.Request, error) {
	u := c.server + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return req, nil
}

// do sends req; an answer outside 2xx is an *Error, its body read and
// closed.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	c.setHeaders(req.Header)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		return nil, errorFrom(resp)
	}
	return resp, nil
}

func (c *Client) see(schema string, msg []byte) {
	if c.observe != nil {
		c.observe(schema, msg)
	}
}

// openStream sends req (see do) and returns the answer's body, for the
// caller to read and close.
func (c *Client) openStream(req *http.Request) (io.ReadCloser, error) {
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}
