package handlers_test

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/api"
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

	r, err := h.client.GetRuntimeLogsWithResponse(ctx, &api.GetRuntimeLogsParams{Service: "dockerd"})
	must(t, err)
	if r.StatusCode() != 200 || string(r.Body) != log || !strings.HasPrefix(r.HTTPResponse.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("whole log: %d %q", r.StatusCode(), r.Body)
	}
	r, err = h.client.GetRuntimeLogsWithResponse(ctx, &api.GetRuntimeLogsParams{Service: "dockerd", Tail: ptr(2)})
	must(t, err)
	if string(r.Body) != "line 2\nline 3\n" {
		t.Errorf("tail 2: %q", r.Body)
	}
	r, err = h.client.GetRuntimeLogsWithResponse(ctx, &api.GetRuntimeLogsParams{Service: "kubelet"})
	must(t, err)
	if r.StatusCode() != 404 || r.JSON404 == nil || !strings.Contains(r.JSON404.Message, "containerd and dockerd") {
		t.Errorf("unknown service: %d %s", r.StatusCode(), r.Body)
	}
	r, err = h.client.GetRuntimeLogsWithResponse(ctx, &api.GetRuntimeLogsParams{Service: "containerd"})
	must(t, err)
	if r.StatusCode() != 404 || !strings.Contains(r.JSON404.Message, "no log yet") {
		t.Errorf("no log yet: %d %s", r.StatusCode(), r.Body)
	}
	c := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	r, err = c.GetRuntimeLogsWithResponse(ctx, &api.GetRuntimeLogsParams{Service: "dockerd", Tail: ptr(-1)})
	must(t, err)
	if r.StatusCode() != 400 || r.JSON400 == nil || !strings.Contains(r.JSON400.Message, `"tail"`) {
		t.Errorf("negative tail: %d %s", r.StatusCode(), r.Body)
	}
}

// TestRuntimeLogsFollow reads a followed log as curl would: what is there,
// then what is appended, as it comes, until the client goes away.
func TestRuntimeLogsFollow(t *testing.T) {
	h := newHarness(t, true)
	must(t, os.WriteFile(filepath.Join(h.runtime.logDir, "containerd.log"), []byte("old\n"), 0o644))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := h.client.GetRuntimeLogs(ctx, &api.GetRuntimeLogsParams{Service: "containerd", Follow: ptr(true)})
	must(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for _, want := range []string{"old\n", "appended later\n"} {
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("read %q, %v; want %q", line, err, want)
		}
	}
	<-h.runtime.followed
	cancel() // the client goes away; the handler's Follow ends with it
}
