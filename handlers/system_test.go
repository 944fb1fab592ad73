package handlers_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// fakeShutdown records the shutdowns asked for; the first wins, as the
// agent's does.
type fakeShutdown struct {
	mu    sync.Mutex
	calls []string
	begun int
}

func (f *fakeShutdown) order(action string, grace time.Duration) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) > 0 {
		return nil, httpapi.Errorf(httpapi.ErrConflict, "the agent is already shutting down (%s)", f.calls[0])
	}
	f.calls = append(f.calls, fmt.Sprintf("%s %v", action, grace))
	return func() {
		f.mu.Lock()
		f.begun++
		f.mu.Unlock()
	}, nil
}

func (f *fakeShutdown) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func TestShutdownBadInput(t *testing.T) {
	h := newHarness(t, true)
	c := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	for _, tc := range []struct{ body, want string }{
		{`{}`, "action"},
		{`{"action":"halt"}`, `action: "halt" is not poweroff or reboot`},
		{`{"action":"poweroff","grace_seconds":-1}`, "grace_seconds: -1"},
		{`{"action":"poweroff","grace_seconds":601}`, "grace_seconds: 601"},
		{`{"action":"poweroff","grace_seconds":"5"}`, "grace_seconds"},
		{`{"action":"poweroff","force":true}`, "force"},
		{``, "body"},
	} {
		r, err := c.ShutdownSystemWithBodyWithResponse(context.Background(), "application/json", strings.NewReader(tc.body))
		must(t, err)
		if r.StatusCode() != 400 || r.JSON400 == nil || !strings.Contains(r.JSON400.Message, tc.want) {
			t.Errorf("%s: got %d %s, want 400 naming %q", tc.body, r.StatusCode(), r.Body, tc.want)
		}
	}
	if calls := h.shutdowns.list(); len(calls) != 0 {
		t.Errorf("bad requests began shutdowns: %v", calls)
	}
}

func TestShutdownAcceptedOnce(t *testing.T) {
	h := newHarness(t, true)
	ctx := context.Background()
	r, err := h.client.ShutdownSystemWithResponse(ctx, api.ShutdownRequest{Action: api.ShutdownRequestActionReboot})
	must(t, err)
	if r.StatusCode() != http.StatusAccepted || r.JSON202 == nil || r.JSON202.Action != "reboot" || r.JSON202.GraceSeconds != 10 {
		t.Fatalf("got %d %s, want 202 reboot with the default grace of 10 s", r.StatusCode(), r.Body)
	}
	grace := int32(3)
	r, err = h.client.ShutdownSystemWithResponse(ctx, api.ShutdownRequest{Action: api.ShutdownRequestActionPoweroff, GraceSeconds: &grace})
	must(t, err)
	if r.StatusCode() != http.StatusConflict || r.JSON409 == nil || !strings.Contains(r.JSON409.Message, "reboot") {
		t.Fatalf("a second shutdown: got %d %s, want 409 naming the reboot under way", r.StatusCode(), r.Body)
	}
	if calls := h.shutdowns.list(); len(calls) != 1 || calls[0] != "reboot 10s" {
		t.Errorf("shutdowns ordered: %v, want [reboot 10s]", calls)
	}
	h.shutdowns.mu.Lock()
	defer h.shutdowns.mu.Unlock()
	if h.shutdowns.begun != 1 {
		t.Errorf("the accepted shutdown was begun %d times, want once", h.shutdowns.begun)
	}
}

func TestInfoShares(t *testing.T) {
	h := newHarness(t, true)
	r, err := h.client.GetInfoWithResponse(context.Background())
	must(t, err)
	if r.JSON200 == nil || r.JSON200.Shares == nil || len(*r.JSON200.Shares) != 1 || (*r.JSON200.Shares)[0].Path != "/arcbox" {
		t.Fatalf("got %d %s, want the one share", r.StatusCode(), r.Body)
	}
}
