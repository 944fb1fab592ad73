//go:build linux

package agenttest

import (
	"context"
	"net"
	"net/http"
	"testing"

	"github.com/arcbox/arcbox-agent/api"
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
