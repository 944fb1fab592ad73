package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// post sends body with contentType ("" for none; a nil body for none) and
// returns the status and the error's message, the response checked
// against the contract.
func post(t *testing.T, h *harness, path, contentType string, body *string) (int, string, http.Header) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = strings.NewReader(*body)
	}
	req, err := http.NewRequest(http.MethodPost, h.url+path, r)
	must(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c := &http.Client{Transport: &apitest.Transport{T: t, SkipRequestValidation: true}}
	resp, err := c.Do(req)
	must(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e api.Error
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e.Message, resp.Header
}

// TestStrictBodies: a required body absent or null is a 400 naming it; a
// body that is not application/json is a 415; a key given twice is a 400
// naming it; an optional body may be absent with no Content-Type at all.
func TestStrictBodies(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	null, empty, obj := "null", "", `{"cmd":["true"]}`
	for _, tc := range []struct {
		name, path, ct string
		body           *string
		want           int
		inMsg          string
	}{
		{"create, null body", "/v1/sandboxes", "application/json", &null, 400, "request body is required: a CreateSandboxRequest object"},
		{"create, no body", "/v1/sandboxes", "application/json", nil, 400, "request body is required: a CreateSandboxRequest object"},
		{"create, empty body", "/v1/sandboxes", "", &empty, 400, "request body is required"},
		{"run, no body", "/v1/sandboxes/box-1/run", "", nil, 400, "request body is required: a RunRequest object"},
		{"create, text/plain", "/v1/sandboxes", "text/plain", &obj, 415, `its Content-Type is "text/plain"`},
		{"create, xml", "/v1/sandboxes", "application/xml", ptr(`<sandbox/>`), 415, `its Content-Type is "application/xml"`},
		{"create, curl -d", "/v1/sandboxes", "application/x-www-form-urlencoded", &obj, 415, "curl --json"},
		{"run, no Content-Type", "/v1/sandboxes/box-1/run", "", &obj, 415, "no Content-Type"},
		{"create, a key twice", "/v1/sandboxes", "application/json", ptr(`{"id":"a","id":"b"}`), 400, `key "id" is given twice`},
		{"create, nested key twice", "/v1/sandboxes", "application/json", ptr(`{"limits":{"vcpus":1,"vcpus":2}}`), 400, `field "limits": key "vcpus" is given twice`},
		{"stop, null body", "/v1/sandboxes/box-1/stop", "application/json", &null, 400, "null; it must be a StopSandboxRequest object"},
		{"restore, labels null", "/v1/snapshots/snap-1/restore", "application/json", ptr(`{"labels":null}`), 400, `field "labels" is null`},
		{"ensure, no body and no type", "/v1/runtime/ensure", "", nil, 200, ""},
		{"stop, no body and no type", "/v1/sandboxes/box-1/stop", "", nil, 200, ""},
		{"checkpoint, empty body of any type", "/v1/sandboxes/box-1/checkpoint", "text/plain", &empty, 201, ""},
		{"ping, charset", "/v1/ping", "application/json; charset=utf-8", ptr(`{"message":"é"}`), 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg, _ := post(t, h, tc.path, tc.ct, tc.body)
			if code != tc.want || !strings.Contains(msg, tc.inMsg) {
				t.Errorf("got %d %q, want %d with %q", code, msg, tc.want, tc.inMsg)
			}
		})
	}
	if len(h.sandboxes.created) != 0 {
		t.Errorf("refused creates reached the manager: %+v", h.sandboxes.created)
	}
}

// TestNumberBounds: every number is checked against the contract's bounds
// before it becomes a duration, so none overflows.
func TestNumberBounds(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	for _, tc := range []struct {
		path, body, inMsg string
	}{
		{"/v1/sandboxes", `{"ttl_seconds":18446744074}`, `field "ttl_seconds" must be at most 2592000 (30 days), got 18446744074`},
		{"/v1/sandboxes", `{"ttl_seconds":9223372036854775807}`, `field "ttl_seconds" must be at most 2592000`},
		{"/v1/sandboxes", `{"limits":{"vcpus":1025}}`, `field "limits.vcpus" must be at most 1024`},
		{"/v1/sandboxes", `{"limits":{"memory_mib":7}}`, `field "limits.memory_mib" must be 0 (the default) or at least 8`},
		{"/v1/sandboxes", `{"limits":{"memory_mib":1048577}}`, `field "limits.memory_mib" must be at most 1048576`},
		{"/v1/sandboxes", `{"limits":{"pids":7}}`, `field "limits.pids" must be 0 (the default) or at least 8`},
		{"/v1/sandboxes", `{"limits":{"pids":4194305}}`, `field "limits.pids" must be at most 4194304`},
		{"/v1/sandboxes", `{"limits":{"pids":-1}}`, `field "limits.pids" must not be negative`},
		{"/v1/sandboxes", `{"security":{"user_namespace":"no"}}`, `"security.user_namespace"`},
		{"/v1/sandboxes", `{"security":{"seccomp":false}}`, `"security.seccomp"`},
		{"/v1/sandboxes", `{"labels":{"":"x"}}`, `field "labels": a key is empty`},
		{"/v1/sandboxes", `{"cmd":[""]}`, `field "cmd": the program (cmd[0]) is empty`},
		{"/v1/sandboxes", `{"id":"-x"}`, `field "id": "-x" is not an id`},
		{"/v1/sandboxes", `{"mounts":[{"source":"/a","target":"/x/.."}]}`, `field "mounts[0].target"`},
		{"/v1/sandboxes", `{"env":{"A=B":"c"}}`, `field "env": "A=B" is not a variable name`},
		{"/v1/sandboxes", `{"rootfs":"/a:b"}`, `field "rootfs"`},
		{"/v1/sandboxes", `{"network":{"mode":"host"}}`, `field "network.mode": "host" is not a mode`},
		{"/v1/sandboxes/box-1/run", `{"cmd":["x"],"timeout_seconds":18446744074}`, `field "timeout_seconds" must be at most 604800 (7 days)`},
		{"/v1/sandboxes/box-1/run", `{"cmd":["x"],"user":"a:b:c"}`, `field "user"`},
		{"/v1/sandboxes/box-1/stop", `{"timeout_seconds":3601}`, `field "timeout_seconds" must be at most 3600 (an hour)`},
		{"/v1/snapshots/snap-1/restore", `{"ttl_seconds":18446744074}`, `field "ttl_seconds" must be at most 2592000`},
		{"/v1/snapshots/snap-1/restore", `{"network_override":{"mode":"nat"}}`, `field "network_override.mode"`},
		{"/v1/sandboxes/box-1/checkpoint", `{"name":"` + strings.Repeat("é", 257) + `"}`, `field "name" is 257 characters long; at most 256`},
		{"/v1/sandboxes/box-1/checkpoint", `{"labels":{"":"x"}}`, `field "labels": a key is empty`},
		{"/v1/ping", `{"timestamp_secs":9223372037}`, `field "timestamp_secs" must be at most 9223372036`},
		{"/v1/sandboxes/-x/stop", `{}`, `path parameter "id": "-x" is not an id`},
	} {
		code, msg, _ := post(t, h, tc.path, "application/json", &tc.body)
		if code != 400 || !strings.Contains(msg, tc.inMsg) {
			t.Errorf("%s %s: got %d %q, want 400 with %q", tc.path, tc.body, code, msg, tc.inMsg)
		}
	}
	if len(h.sandboxes.created)+len(h.sandboxes.runs)+len(h.sandboxes.stops)+len(h.sandboxes.restores)+len(h.sandboxes.checkpoints) != 0 {
		t.Errorf("refused requests reached the manager: %+v", h.sandboxes)
	}
	// 256 two-byte characters are 256 characters, not 512 bytes.
	code, msg, _ := post(t, h, "/v1/sandboxes/box-1/checkpoint", "application/json", ptr(`{"name":"`+strings.Repeat("é", 256)+`"}`))
	if code != 201 {
		t.Errorf("256-character name: %d %q", code, msg)
	}

	raw := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	ctx := context.Background()
	var tailErr *client.Error
	if _, err := readLog(ctx, logsSDK(t, h, true, nil), "dockerd", client.LogsOptions{Tail: 1_000_001}); !errors.As(err, &tailErr) ||
		tailErr.Code != 400 || !strings.Contains(tailErr.Message, `query parameter "tail" must be at most 1000000`) {
		t.Errorf("tail: %v", err)
	}
	for _, params := range []api.ListSandboxesParams{{Label: &[]string{"=v"}}, {Label: &[]string{"k"}}} {
		r, err := raw.ListSandboxesWithResponse(ctx, &params)
		must(t, err)
		if r.StatusCode() != 400 || !strings.Contains(r.JSON400.Message, `query parameter "label"`) {
			t.Errorf("label %v: %d %s", *params.Label, r.StatusCode(), r.Body)
		}
	}
	snaps, err := raw.ListSnapshotsWithResponse(ctx, &api.ListSnapshotsParams{SandboxId: ptr("a b")})
	must(t, err)
	if snaps.StatusCode() != 400 || !strings.Contains(snaps.JSON400.Message, `query parameter "sandbox_id"`) {
		t.Errorf("sandbox_id filter: %d %s", snaps.StatusCode(), snaps.Body)
	}
	g, err := raw.GetSandboxWithResponse(ctx, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.0.1.2.3.4.5.6.7")
	must(t, err)
	if g.StatusCode() != 400 || !strings.Contains(g.JSON400.Message, `path parameter "id"`) {
		t.Errorf("a 67-character id: %d %s", g.StatusCode(), g.Body)
	}
}

// TestNoSpaceAndBusy: the manager's out-of-space error is a 507 and its
// busy error a 429 with Retry-After on every operation that writes or
// queues; the contract lists both.
func TestNoSpaceAndBusy(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()
	calls := map[string]func() (int, http.Header){
		"create": func() (int, http.Header) {
			r, err := h.client.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{})
			must(t, err)
			return r.StatusCode(), r.HTTPResponse.Header
		},
		"stop": func() (int, http.Header) {
			r, err := h.client.StopSandboxWithResponse(ctx, "box-1", api.StopSandboxRequest{})
			must(t, err)
			return r.StatusCode(), r.HTTPResponse.Header
		},
		"remove": func() (int, http.Header) {
			r, err := h.client.RemoveSandboxWithResponse(ctx, "box-1", &api.RemoveSandboxParams{})
			must(t, err)
			return r.StatusCode(), r.HTTPResponse.Header
		},
		"run": func() (int, http.Header) {
			r, err := h.client.RunInSandbox(ctx, "box-1", api.RunRequest{Cmd: []string{"true"}})
			must(t, err)
			_ = r.Body.Close()
			return r.StatusCode, r.Header
		},
		"checkpoint": func() (int, http.Header) {
			r, err := h.client.CheckpointSandboxWithResponse(ctx, "box-1", api.CheckpointRequest{})
			must(t, err)
			return r.StatusCode(), r.HTTPResponse.Header
		},
		"restore": func() (int, http.Header) {
			r, err := h.client.RestoreSnapshotWithResponse(ctx, "snap-1", api.RestoreRequest{})
			must(t, err)
			return r.StatusCode(), r.HTTPResponse.Header
		},
		"delete snapshot": func() (int, http.Header) {
			r, err := h.client.DeleteSnapshotWithResponse(ctx, "snap-1")
			must(t, err)
			return r.StatusCode(), r.HTTPResponse.Header
		},
	}
	for name, call := range calls {
		h.sandboxes.err = fmt.Errorf("write the record of sandbox %q: no space left on device: %w", "box-1", sandbox.ErrNoSpace)
		if code, _ := call(); code != http.StatusInsufficientStorage {
			t.Errorf("%s out of space: got %d, want 507", name, code)
		}
		h.sandboxes.err = fmt.Errorf("16 creates are queued: %w", sandbox.ErrBusy)
		if code, hdr := call(); code != http.StatusTooManyRequests || hdr.Get("Retry-After") != "1" {
			t.Errorf("%s busy: got %d, Retry-After %q; want 429 and 1", name, code, hdr.Get("Retry-After"))
		}
	}
}

// TestRunReportsTruncatedOutput: a stream cut because something the
// workload left kept writing is never sent as data; the exit message names
// it and says why, over NDJSON and over the WebSocket.
func TestRunReportsTruncatedOutput(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{code: 0, output: []sandbox.Output{
		{Stream: sandbox.StreamStdout, Data: []byte("hello\n")},
		{Stream: sandbox.StreamStderr, Truncated: "a background process kept it open and kept writing"},
		{Stream: sandbox.StreamStdout, Truncated: "a background process kept it open and kept writing"},
	}}
	resp, err := h.client.RunInSandbox(context.Background(), "box-1", api.RunRequest{Cmd: []string{"sh"}})
	must(t, err)
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	resp.Body.Close()
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	if len(lines) != 2 || lines[0] != `{"stream":"stdout","data":"aGVsbG8K"}` {
		t.Fatalf("NDJSON: %q, want the data line and the exit line", lines)
	}
	checkTruncatedExit(t, []byte(lines[1]))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.url, "http")+"/v1/sandboxes/box-1/run", nil)
	must(t, err)
	defer func() { _ = c.CloseNow() }()
	must(t, c.Write(ctx, websocket.MessageText, []byte(`{"cmd":["sh"]}`)))
	var msgs [][]byte
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Errorf("closed with %v", err)
			}
			break
		}
		msgs = append(msgs, b)
	}
	if len(msgs) != 2 {
		t.Fatalf("WebSocket: %q, want the data message and the exit message", msgs)
	}
	checkTruncatedExit(t, msgs[1])
}

func checkTruncatedExit(t *testing.T, line []byte) {
	t.Helper()
	if err := apitest.ValidateJSON(t, "OutputMessage", line); err != nil {
		t.Errorf("exit message %s: %v", line, err)
	}
	var m api.OutputMessage
	must(t, json.Unmarshal(line, &m))
	if m.Stream != api.Exit || m.Truncated == nil || len(*m.Truncated) != 2 || (*m.Truncated)[0] != api.TruncatedStderr ||
		(*m.Truncated)[1] != api.TruncatedStdout || m.Message == nil || !strings.Contains(*m.Message, "stderr was cut: a background process") {
		t.Errorf("exit message %s: want stderr and stdout truncated, and why", line)
	}
}

// TestWebSocketEndpointsWithoutTheHandshake: run and exec asked as plain
// GETs answer 426 in the JSON error shape.
func TestWebSocketEndpointsWithoutTheHandshake(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	c := &http.Client{Transport: &apitest.Transport{T: t}}
	for _, ep := range []string{"run", "exec"} {
		resp, err := c.Get(h.url + "/v1/sandboxes/box-1/" + ep)
		must(t, err)
		assertError(t, resp, http.StatusUpgradeRequired, "connect with a WebSocket client")
	}
}
