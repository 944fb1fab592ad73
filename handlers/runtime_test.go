package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

func TestEnsureRuntime(t *testing.T) {
	h := newHarness(t, true)
	ctx := context.Background()

	// No body: start_if_needed defaults to true.
	r, err := h.client.EnsureRuntimeWithBodyWithResponse(ctx, "application/json", nil)
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200 == nil || !r.JSON200.Ready || r.JSON200.Status != api.RuntimeEnsureResponseStatusStarted || r.JSON200.Endpoint != "vsock:2375" {
		t.Fatalf("no body: %d %s", r.StatusCode(), r.Body)
	}
	// A probe never starts anything.
	r, err = h.client.EnsureRuntimeWithResponse(ctx, api.RuntimeEnsureRequest{StartIfNeeded: ptr(false)})
	must(t, err)
	if r.JSON200 == nil || r.JSON200.Ready || r.JSON200.Status != api.RuntimeEnsureResponseStatusFailed || !strings.Contains(r.JSON200.Message, "docker socket missing") {
		t.Fatalf("probe: %d %s", r.StatusCode(), r.Body)
	}
	if got := h.runtime.ensures; len(got) != 2 || !got[0] || got[1] {
		t.Errorf("ensures %v, want [true false]", got)
	}
	c := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	r, err = c.EnsureRuntimeWithBodyWithResponse(ctx, "application/json", strings.NewReader(`{"start":true}`))
	must(t, err)
	if r.StatusCode() != 400 || !strings.Contains(string(r.Body), `unknown field \"start\"`) {
		t.Errorf("unknown field: %d %s", r.StatusCode(), r.Body)
	}
}

func TestRuntimeStatus(t *testing.T) {
	h := newHarness(t, true)
	r, err := h.client.GetRuntimeStatusWithResponse(context.Background())
	must(t, err)
	s := r.JSON200
	if r.StatusCode() != 200 || s == nil || !s.ContainerdReady || s.DockerReady || len(s.Services) != 3 {
		t.Fatalf("%d %s", r.StatusCode(), r.Body)
	}
	if s.Services[1].Status != api.ServiceStatusStatusError || s.Services[2].Name != "data-volume" {
		t.Errorf("services %+v", s.Services)
	}
}

func TestRuntimeLogs(t *testing.T) {
	h := newHarness(t, true)
	ctx := context.Background()
	log := "line 1\nline 2\nline 3\n"
	must(t, os.WriteFile(filepath.Join(h.runtime.logDir, "dockerd.log"), []byte(log), 0o644))
	var contentType string
	c := logsSDK(t, h, false, &contentType)

	text, err := readLog(ctx, c, "dockerd", client.LogsOptions{})
	if err != nil || text != log || !strings.HasPrefix(contentType, "text/plain") {
		t.Errorf("whole log: %q (%s), %v", text, contentType, err)
	}
	if text, err = readLog(ctx, c, "dockerd", client.LogsOptions{Tail: 2}); err != nil || text != "line 2\nline 3\n" {
		t.Errorf("tail 2: %q, %v", text, err)
	}
	var apiErr *client.Error
	_, err = readLog(ctx, c, "kubelet", client.LogsOptions{})
	if !errors.As(err, &apiErr) || apiErr.Code != 404 || !strings.Contains(apiErr.Message, "containerd and dockerd") {
		t.Errorf("unknown service: %v", err)
	}
	_, err = readLog(ctx, c, "containerd", client.LogsOptions{})
	if !errors.As(err, &apiErr) || apiErr.Code != 404 || !strings.Contains(apiErr.Message, "no log yet") {
		t.Errorf("no log yet: %v", err)
	}
	// The SDK sends no tail below 1: ask for -1 through its raw method.
	resp, err := logsSDK(t, h, true, nil).API().GetRuntimeLogs(ctx, &api.GetRuntimeLogsParams{Service: "dockerd", Tail: ptr(-1)})
	must(t, err)
	defer resp.Body.Close()
	var refusal api.Error
	if resp.StatusCode != 400 || json.NewDecoder(resp.Body).Decode(&refusal) != nil || !strings.Contains(refusal.Message, `"tail"`) {
		t.Errorf("negative tail: %d %q", resp.StatusCode, refusal.Message)
	}
}

// TestRuntimeLogsFollow reads a followed log through the SDK: what is
// there, then what is appended, as it comes, until the client goes away.
func TestRuntimeLogsFollow(t *testing.T) {
	h := newHarness(t, true)
	must(t, os.WriteFile(filepath.Join(h.runtime.logDir, "containerd.log"), []byte("old\n"), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	defer cancel()
	want := []string{"old", "appended later"}
	var got []string
	for line, err := range logsSDK(t, h, false, nil).RuntimeLogs(ctx, "containerd", client.LogsOptions{Follow: true}) {
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		if got = append(got, line); len(got) == len(want) {
			break // the client goes away; the handler's Follow ends with it
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	<-h.runtime.followed
}

// logsSDK is the SDK on h's server, every exchange checked against the
// contract, the requests too unless lax (to send what it forbids). When
// contentType is not nil, each answer's Content-Type, which the SDK does
// not hand over, is put there.
func logsSDK(t *testing.T, h *harness, lax bool, contentType *string) *client.Client {
	t.Helper()
	c, err := client.New("tcp://"+strings.TrimPrefix(h.url, "http://"),
		client.WithTransport(func(base http.RoundTripper) http.RoundTripper {
			return roundTripper(func(req *http.Request) (*http.Response, error) {
				resp, err := base.RoundTrip(req)
				if err == nil && contentType != nil {
					*contentType = resp.Header.Get("Content-Type")
				}
				return resp, err
			})
		}),
		client.WithTransport(func(base http.RoundTripper) http.RoundTripper {
			return &apitest.Transport{T: t, Base: base, SkipRequestValidation: lax}
		}))
	must(t, err)
	return c
}

// roundTripper is a function as an http.RoundTripper.
type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// readLog reads a runtime log through the SDK, whole: its lines, each
// with its newline back, or the error that ended it.
func readLog(ctx context.Context, c *client.Client, service string, o client.LogsOptions) (string, error) {
	var b strings.Builder
	for line, err := range c.RuntimeLogs(ctx, service, o) {
		if err != nil {
			return b.String(), err
		}
		b.WriteString(line + "\n")
	}
	return b.String(), nil
}
