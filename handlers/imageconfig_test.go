package handlers_test

import (
	"context"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// The fake's sandboxes are made from an image, of config fakeImageConfig,
// so that a run without cmd is served, as the contract says it may be,
// but dirBox, made from a directory.
const (
	imageBox = "img-box"
	dirBox   = "dir-box"
)

var fakeImageConfig = sandbox.ImageConfig{Entrypoint: []string{"python", "-u"}, Cmd: []string{"app.py"},
	Env: []string{"PATH=/usr/bin", "NOVALUE", "LANG=C.UTF-8"}, WorkingDir: "/srv", User: "app:staff"}

func (f *fakeSandboxes) ImageConfig(id string) (*sandbox.ImageConfig, error) {
	if f.err != nil {
		return nil, f.err
	}
	if id == dirBox {
		return nil, nil
	}
	cfg := fakeImageConfig
	return &cfg, nil
}

func (f *fakeSandboxes) ResolveCmd(id string, p sandbox.Process) (sandbox.Process, error) {
	if len(p.Cmd) > 0 {
		return p, nil
	}
	if id == dirBox {
		return p, sandbox.InvalidField("cmd", "empty, and sandbox %q was not made from an image", id)
	}
	p.Cmd = fakeImageConfig.Command()
	return p, nil
}

// TestImageConfigReported: a sandbox made from an image reports its
// config, env by name; one made from a directory reports none.
func TestImageConfigReported(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()
	r, err := h.client.GetSandboxWithResponse(ctx, imageBox)
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200.ImageConfig == nil {
		t.Fatalf("got %d %s", r.StatusCode(), r.Body)
	}
	got := *r.JSON200.ImageConfig
	if !slices.Equal(got.Entrypoint, []string{"python", "-u"}) || !slices.Equal(got.Cmd, []string{"app.py"}) ||
		!maps.Equal(got.Env, map[string]string{"PATH": "/usr/bin", "LANG": "C.UTF-8"}) || got.WorkingDir != "/srv" || got.User != "app:staff" {
		t.Errorf("image_config %+v", got)
	}
	stop, err := h.client.StopSandboxWithResponse(ctx, imageBox, api.StopSandboxRequest{})
	must(t, err)
	if stop.StatusCode() != 200 || stop.JSON200.ImageConfig == nil {
		t.Errorf("stop: got %d %s", stop.StatusCode(), stop.Body)
	}
	r, err = h.client.GetSandboxWithResponse(ctx, dirBox)
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200.ImageConfig != nil || strings.Contains(string(r.Body), "image_config") {
		t.Errorf("a sandbox made from a directory: %d %s", r.StatusCode(), r.Body)
	}
}

// TestRunWithoutCmd: a run or exec without cmd runs the image's
// entrypoint and cmd, over NDJSON and both WebSockets; in a sandbox made
// from a directory it is a 400 naming cmd.
func TestRunWithoutCmd(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // bounds a hang only
	defer cancel()
	want := []string{"python", "-u", "app.py"}

	resp, err := h.client.RunInSandbox(ctx, imageBox, api.RunRequest{Env: &map[string]string{"A": "1"}})
	must(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(h.sandboxes.runs) != 1 || !slices.Equal(h.sandboxes.runs[0].Cmd, want) || h.sandboxes.runs[0].Env["A"] != "1" {
		t.Fatalf("NDJSON run without cmd: %d, runs %+v", resp.StatusCode, h.sandboxes.runs)
	}

	for _, ws := range []struct{ path, first string }{
		{"/run", `{"env":{"A":"1"}}`},
		{"/exec", `{"init":{"tty":true}}`},
	} {
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.url, "http")+"/v1/sandboxes/"+imageBox+ws.path, nil)
		must(t, err)
		must(t, c.Write(ctx, websocket.MessageText, []byte(ws.first)))
		if ws.path == "/exec" {
			must(t, c.Write(ctx, websocket.MessageText, []byte(`{"close_stdin":true}`)))
		}
		for {
			if _, _, err := c.Read(ctx); err != nil {
				break
			}
		}
		_ = c.CloseNow()
		if last := h.sandboxes.runs[len(h.sandboxes.runs)-1]; !slices.Equal(last.Cmd, want) {
			t.Errorf("%s without cmd ran %q", ws.path, last.Cmd)
		}
	}

	resp, err = h.client.RunInSandbox(ctx, dirBox, api.RunRequest{})
	must(t, err)
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), `\"cmd\"`) {
		t.Errorf("a run without cmd in a sandbox made from a directory: %d %s", resp.StatusCode, body)
	}
}
