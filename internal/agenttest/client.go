//go:build linux

package agenttest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// UnixTransport dials the unix socket sock for every request, whatever
// its URL's host.
func UnixTransport(sock string) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 16,
	}
}

// Client is the generated client of the API at server over base (nil:
// the default transport), every exchange checked against openapi.yaml and
// disagreements reported as errors of t. With a token, every request
// carries it as its bearer token, as a TCP listener wants.
func Client(t testing.TB, server string, base http.RoundTripper, token string) *api.ClientWithResponses {
	t.Helper()
	if token == "" {
		return apitest.NewClient(t, server, base)
	}
	c, err := api.NewClientWithResponses(server,
		api.WithHTTPClient(&http.Client{Transport: &apitest.Transport{T: t, Base: base}}),
		api.WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
			req.Header.Set("Authorization", "Bearer "+token)
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// SDK is the Go SDK's client of the agent at addr (see client.New), its
// HTTP exchanges checked against openapi.yaml and each stream message
// against its schema, disagreements reported as errors of t. A WebSocket
// handshake goes past the exchange checks: the WebSocket library wants
// the upgraded connection itself.
func SDK(t testing.TB, addr string, opts ...client.Option) *client.Client {
	t.Helper()
	return sdk(t, addr, false, opts...)
}

// RawSDK is SDK without the request checks, to send what the contract
// forbids; the answers are still checked.
func RawSDK(t testing.TB, addr string, opts ...client.Option) *client.Client {
	t.Helper()
	return sdk(t, addr, true, opts...)
}

func sdk(t testing.TB, addr string, skipRequests bool, opts ...client.Option) *client.Client {
	t.Helper()
	opts = append(opts,
		client.WithTransport(func(base http.RoundTripper) http.RoundTripper {
			checked := &apitest.Transport{T: t, Base: base, SkipRequestValidation: skipRequests}
			return roundTripFunc(func(req *http.Request) (*http.Response, error) {
				if req.Header.Get("Upgrade") != "" {
					return base.RoundTrip(req)
				}
				return checked.RoundTrip(req)
			})
		}),
		client.WithObserver(func(schema string, msg []byte) { CheckSchema(t, schema, msg) }))
	c, err := client.New(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// CheckSchema checks a stream message (an NDJSON line or a WebSocket
// message) against schema of openapi.yaml.
func CheckSchema(t testing.TB, schema string, raw []byte) {
	t.Helper()
	spec, _ := apitest.Spec(t)
	ref := spec.Components.Schemas[schema]
	if ref == nil || ref.Value == nil {
		t.Errorf("openapi.yaml has no schema %s", schema)
		return
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Errorf("contract: a %s message is not JSON: %v: %.200s", schema, err, raw)
		return
	}
	if err := ref.Value.VisitJSON(v); err != nil {
		t.Errorf("contract: message is no %s: %v: %.200s", schema, err, raw)
	}
}
