package client_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

// TestEnsureRuntimeStreamCut: a stream that ends without its answer is an
// error that says so, after the phases it brought.
func TestEnsureRuntimeStreamCut(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept") != "application/x-ndjson" {
			t.Errorf("Accept %q", r.Header.Get("Accept"))
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write([]byte(`{"phase":"data_volume","took_ms":3}` + "\n" + `{"phase":"contai`))
	}))
	var phases []string
	_, err := c.EnsureRuntime(testCtx(t), api.RuntimeEnsureRequest{}, func(p api.RuntimeEnsureProgress) { phases = append(phases, string(*p.Phase)) })
	if err == nil || !strings.Contains(err.Error(), "without the answer after 1 phases") {
		t.Errorf("a cut stream: %v", err)
	}
	if len(phases) != 1 || phases[0] != "data_volume" {
		t.Errorf("phases %v", phases)
	}
}

// TestEnsureRuntimeFromAnAgentThatDoesNotStream: an agent that answers
// JSON to the NDJSON ask is read as it answered.
func TestEnsureRuntimeFromAnAgentThatDoesNotStream(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ready":true,"endpoint":"vsock:2375","message":"docker socket ready","status":"reused"}` + "\n"))
	}))
	res, err := c.EnsureRuntime(testCtx(t), api.RuntimeEnsureRequest{}, func(api.RuntimeEnsureProgress) { t.Error("a phase from a JSON answer") })
	if err != nil || res.Status != api.RuntimeEnsureResponseStatusReused || !res.Ready {
		t.Errorf("%+v, %v", res, err)
	}
}

// TestEnsureRuntimeRefused: a refusal is an *Error, streamed or not.
func TestEnsureRuntimeRefused(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusUnauthorized, "a bearer token is required")
	}))
	for _, progress := range []func(api.RuntimeEnsureProgress){nil, func(api.RuntimeEnsureProgress) {}} {
		_, err := c.EnsureRuntime(testCtx(t), api.RuntimeEnsureRequest{}, progress)
		var e *client.Error
		if !errors.As(err, &e) || e.Code != 401 {
			t.Errorf("refused: %v", err)
		}
	}
}
