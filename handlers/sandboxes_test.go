package handlers_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// fakeSandboxes stands in for the manager: the HTTP mapping is what these
// tests check; the real manager is tested in e2e/sandbox.
type fakeSandboxes struct {
	created []sandbox.Spec
	exists  bool
	err     error
	stops   []time.Duration
	runs    []sandbox.Process
	output  []sandbox.Output
	code    int

	checkpoints []sandbox.CheckpointRequest
	restores    []sandbox.RestoreRequest
	snapFilters []sandbox.SnapshotFilter
}

func (f *fakeSandboxes) Create(_ context.Context, s sandbox.Spec) (sandbox.Info, bool, error) {
	if f.err != nil {
		return sandbox.Info{}, false, f.err
	}
	f.created = append(f.created, s)
	return sandbox.Info{ID: s.ID, State: sandbox.StateStarting}, !f.exists, nil
}

func (f *fakeSandboxes) Get(id string) (sandbox.Info, error) {
	if f.err != nil {
		return sandbox.Info{}, f.err
	}
	code := 3
	return sandbox.Info{ID: id, State: sandbox.StateReady, Limits: sandbox.Limits{VCPUs: 1, MemoryMiB: 512, Pids: 1024},
		NetworkMode: "none", CreatedAt: time.Unix(100, 0), ReadyAt: time.Unix(101, 0), LastExitCode: &code, LastExitedAt: time.Unix(102, 0),
		Security: fakeSecurity}, nil
}

// fakeSecurity is how the fake's sandboxes are confined: the defaults.
var fakeSecurity = sandbox.SecurityInfo{UserNamespace: true, IDMap: sandbox.IDMap{HostID: 100000, Size: 65536},
	NoNewPrivileges: true, Seccomp: true, Capabilities: []string{"CAP_CHOWN", "CAP_KILL"}}

// List answers a sandbox for each create, as the manager would.
func (f *fakeSandboxes) List(sandbox.Filter) []sandbox.Info {
	var out []sandbox.Info
	for _, s := range f.created {
		sec := fakeSecurity
		if s.Security.HostUsers {
			sec = sandbox.SecurityInfo{NoNewPrivileges: true, Seccomp: true}
		}
		sec.ReadOnlyRootfs = s.Security.ReadOnlyRootfs
		out = append(out, sandbox.Info{ID: s.ID, State: sandbox.StateReady, Labels: s.Labels, CreatedAt: time.Unix(100, 0), Security: sec})
	}
	return out
}

func (f *fakeSandboxes) Stop(_ context.Context, id string, timeout time.Duration) (sandbox.Info, error) {
	f.stops = append(f.stops, timeout)
	return sandbox.Info{ID: id, State: sandbox.StateStopped, CreatedAt: time.Unix(100, 0)}, f.err
}

func (f *fakeSandboxes) Remove(context.Context, string, bool) error { return f.err }

func (f *fakeSandboxes) Run(_ context.Context, _ string, p sandbox.Process, out func(sandbox.Output) error) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	f.runs = append(f.runs, p)
	for _, o := range f.output {
		if err := out(o); err != nil {
			return 137, err
		}
	}
	return f.code, nil
}

func (f *fakeSandboxes) Checkpoint(_ context.Context, id string, req sandbox.CheckpointRequest) (sandbox.Snapshot, error) {
	if f.err != nil {
		return sandbox.Snapshot{}, f.err
	}
	f.checkpoints = append(f.checkpoints, req)
	return sandbox.Snapshot{ID: "snap-1", SandboxID: id, Name: req.Name, Labels: req.Labels,
		Dir: "/state/snapshots/snap-1", CreatedAt: time.Date(2026, 11, 29, 8, 0, 0, 0, time.FixedZone("X", 3600))}, nil
}

func (f *fakeSandboxes) Snapshots(filter sandbox.SnapshotFilter) []sandbox.Snapshot {
	f.snapFilters = append(f.snapFilters, filter)
	return []sandbox.Snapshot{{ID: "snap-1", SandboxID: "box-1", Dir: "/state/snapshots/snap-1", CreatedAt: time.Unix(100, 0)}}
}

func (f *fakeSandboxes) DeleteSnapshot(context.Context, string) error { return f.err }

func (f *fakeSandboxes) Restore(_ context.Context, _ string, req sandbox.RestoreRequest) (sandbox.Info, error) {
	if f.err != nil {
		return sandbox.Info{}, f.err
	}
	f.restores = append(f.restores, req)
	return sandbox.Info{ID: cmp.Or(req.ID, "sb-new"), State: sandbox.StateReady, IPAddress: "172.20.0.9"}, nil
}

func TestSnapshotEndpoints(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()

	c, err := h.client.CheckpointSandboxWithResponse(ctx, "box-1", api.CheckpointRequest{Name: ptr("before"), Labels: &map[string]string{"k": "v"}})
	must(t, err)
	// 2026-11-29T08:00:00+01:00, in Unix seconds like every *_at.
	if c.StatusCode() != 201 || c.JSON201.SnapshotId != "snap-1" || c.JSON201.SnapshotDir == "" || c.JSON201.CreatedAt != 1795935600 {
		t.Errorf("checkpoint: got %d %s, want 201 with the snapshot and created_at 1795935600", c.StatusCode(), c.Body)
	}
	if got := h.sandboxes.checkpoints; len(got) != 1 || got[0].Name != "before" || got[0].Labels["k"] != "v" {
		t.Errorf("checkpoint request reached the manager as %+v", got)
	}
	// An empty body is a checkpoint with no name.
	e, err := h.client.CheckpointSandboxWithBodyWithResponse(ctx, "box-1", "application/json", strings.NewReader(""))
	must(t, err)
	if e.StatusCode() != 201 {
		t.Errorf("checkpoint without a body: got %d %s", e.StatusCode(), e.Body)
	}

	l, err := h.client.ListSnapshotsWithResponse(ctx, &api.ListSnapshotsParams{SandboxId: ptr("box-1"), Label: &[]string{"a=b", "c="}})
	must(t, err)
	if l.StatusCode() != 200 || len(l.JSON200.Snapshots) != 1 || l.JSON200.Snapshots[0].CreatedAt != 100 {
		t.Errorf("list: got %d %s", l.StatusCode(), l.Body)
	}
	if f := h.sandboxes.snapFilters; len(f) != 1 || f[0].SandboxID != "box-1" || f[0].Labels["a"] != "b" || f[0].Labels["c"] != "" || len(f[0].Labels) != 2 {
		t.Errorf("list filter reached the manager as %+v", f)
	}
	raw := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	bad, err := raw.ListSnapshotsWithResponse(ctx, &api.ListSnapshotsParams{Label: &[]string{"nokey"}})
	must(t, err)
	if bad.StatusCode() != 400 || !strings.Contains(string(bad.Body), `nokey`) {
		t.Errorf("bad label filter: got %d %s, want 400 naming it", bad.StatusCode(), bad.Body)
	}

	r, err := h.client.RestoreSnapshotWithResponse(ctx, "snap-1", api.RestoreRequest{Id: ptr("copy"),
		NetworkOverride: &api.NetworkSpec{Mode: ptr(api.Tap)}, TtlSeconds: ptr(int64(60))})
	must(t, err)
	if r.StatusCode() != 201 || r.JSON201.Id != "copy" || *r.JSON201.IpAddress != "172.20.0.9" {
		t.Errorf("restore: got %d %s", r.StatusCode(), r.Body)
	}
	got := h.sandboxes.restores[0]
	if got.ID != "copy" || got.NetworkMode != "tap" || got.TTL == nil || *got.TTL != time.Minute || got.Labels != nil {
		t.Errorf("restore request reached the manager as %+v", got)
	}
	// Absent fields keep the original's; an explicit empty label set clears them.
	r2, err := h.client.RestoreSnapshotWithBodyWithResponse(ctx, "snap-1", "application/json", strings.NewReader(`{"labels":{}}`))
	must(t, err)
	if r2.StatusCode() != 201 {
		t.Fatalf("restore: got %d %s", r2.StatusCode(), r2.Body)
	}
	if got := h.sandboxes.restores[1]; got.TTL != nil || got.Labels == nil || len(got.Labels) != 0 {
		t.Errorf("restore with empty labels reached the manager as %+v", got)
	}
	d, err := h.client.DeleteSnapshotWithResponse(ctx, "snap-1")
	must(t, err)
	if d.StatusCode() != 204 {
		t.Errorf("delete: got %d %s", d.StatusCode(), d.Body)
	}
	h.sandboxes.err = fmt.Errorf("snapshot %q is being restored: %w", "snap-1", sandbox.ErrConflict)
	d, err = h.client.DeleteSnapshotWithResponse(ctx, "snap-1")
	must(t, err)
	if d.StatusCode() != 409 {
		t.Errorf("delete during a restore: got %d %s, want 409", d.StatusCode(), d.Body)
	}
	h.sandboxes.err = fmt.Errorf("sandbox %q is running; a checkpoint needs it ready: %w", "box-1", sandbox.ErrConflict)
	c, err = h.client.CheckpointSandboxWithResponse(ctx, "box-1", api.CheckpointRequest{})
	must(t, err)
	if c.StatusCode() != 409 || c.JSON409 == nil {
		t.Errorf("checkpoint of a running sandbox: got %d %s, want 409", c.StatusCode(), c.Body)
	}
}

func TestSandboxesUnavailable(t *testing.T) {
	h := newHarness(t, true)
	r, err := h.client.ListSandboxesWithResponse(context.Background(), &api.ListSandboxesParams{})
	must(t, err)
	if r.StatusCode() != 503 || !strings.Contains(string(r.Body), "neither crun nor runc") {
		t.Fatalf("got %d %s, want 503 with the reason", r.StatusCode(), r.Body)
	}
}

func TestCreateSandbox(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()
	req := api.CreateSandboxRequest{Id: ptr("box-1"), Limits: &api.Limits{Vcpus: ptr(int32(2)), Pids: ptr(int64(64))}, TtlSeconds: ptr(int64(60)),
		Mounts: &[]api.Mount{{Source: "/src", Target: "/dst", Readonly: ptr(true)}}, Cmd: &[]string{"sleep", "1"},
		Security: &api.SecuritySpec{ReadOnlyRootfs: ptr(true)}}
	r, err := h.client.CreateSandboxWithResponse(ctx, req)
	must(t, err)
	if r.StatusCode() != 202 || r.JSON202 == nil || r.JSON202.Id != "box-1" || r.JSON202.State != api.SandboxStateStarting {
		t.Fatalf("create: %d %s", r.StatusCode(), r.Body)
	}
	got := h.sandboxes.created[0]
	if got.TTL != time.Minute || got.Limits.VCPUs != 2 || got.Limits.Pids != 64 || !got.Mounts[0].ReadOnly || got.Cmd[1] != "1" ||
		got.Security != (sandbox.Security{ReadOnlyRootfs: true}) || got.RegistryAuth != nil {
		t.Errorf("spec %+v", got)
	}
	h.sandboxes.exists = true
	r, err = h.client.CreateSandboxWithResponse(ctx, req)
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200 == nil {
		t.Errorf("same id and request again: %d %s, want 200", r.StatusCode(), r.Body)
	}

	c := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	for body, field := range map[string]string{
		`{"ttl_seconds":-1}`:           `"ttl_seconds"`,
		`{"limits":{"memory_mib":-5}}`: `"limits.memory_mib"`,
		`{"limits":{"vcpus":-1}}`:      `"limits.vcpus"`,
		`{"idd":"x"}`:                  `"idd"`,
		`{"cmd":"echo hi"}`:            `"cmd"`,
		`{"limits":{"pids":3}}`:        `"limits.pids"`,
		`{"security":{"userns":true}}`: `"security.userns"`,
	} {
		r, err := c.CreateSandboxWithBodyWithResponse(ctx, "application/json", strings.NewReader(body))
		must(t, err)
		if r.StatusCode() != 400 || r.JSON400 == nil || !strings.Contains(r.JSON400.Message, field) {
			t.Errorf("%s: %d %s, want 400 naming %s", body, r.StatusCode(), r.Body, field)
		}
	}

	// The manager's policy refusals name the field and the rule.
	for _, refusal := range []string{
		`field "mounts[0].source": "/etc" is not under a mount root (/mnt/shared)`,
		`field "image": registry "127.0.0.1:5000" is not allowed: loopback registries must be listed with --registry`,
		`field "rootfs": "/" is not in the agent's root filesystem store`,
	} {
		h.sandboxes.err = fmt.Errorf("%s: %w", refusal, sandbox.ErrInvalid)
		r, err := h.client.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Mounts: &[]api.Mount{{Source: "/etc", Target: "/etc"}}})
		must(t, err)
		if r.StatusCode() != 400 || r.JSON400 == nil || !strings.Contains(r.JSON400.Message, refusal) {
			t.Errorf("%s: %d %s, want 400 with it", refusal, r.StatusCode(), r.Body)
		}
	}
}

// TestSandboxErrorClasses: each class of the manager's errors has its status.
func TestSandboxErrorClasses(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("sandbox %q: %w", "x", sandbox.ErrNotFound), 404},
		{fmt.Errorf(`field "kernel": not supported: %w`, sandbox.ErrInvalid), 400},
		{fmt.Errorf("sandbox is stopped: %w", sandbox.ErrConflict), 409},
		{fmt.Errorf("manager closed: %w", sandbox.ErrUnavailable), 503},
	} {
		h.sandboxes.err = tc.err
		r, err := h.client.GetSandboxWithResponse(ctx, "x")
		must(t, err)
		if r.StatusCode() != tc.want || !strings.Contains(string(r.Body), strings.ReplaceAll(tc.err.Error(), `"`, `\"`)) {
			t.Errorf("%v: got %d %s, want %d with the message", tc.err, r.StatusCode(), r.Body, tc.want)
		}
		run, err := h.client.RunInSandbox(ctx, "x", api.RunRequest{Cmd: []string{"true"}})
		must(t, err)
		body, _ := io.ReadAll(run.Body)
		_ = run.Body.Close()
		if run.StatusCode != tc.want {
			t.Errorf("run, %v: got %d %s, want %d", tc.err, run.StatusCode, body, tc.want)
		}
	}
}

func TestGetSandbox(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	r, err := h.client.GetSandboxWithResponse(context.Background(), "box-1")
	must(t, err)
	s := r.JSON200
	if r.StatusCode() != 200 || s == nil || s.CreatedAt != 100 || *s.ReadyAt != 101 || *s.LastExitCode != 3 || *s.LastExitedAt != 102 ||
		*s.Limits.MemoryMib != 512 || *s.Network.Mode != "none" || s.Network.IpAddress != nil {
		t.Fatalf("got %d %s", r.StatusCode(), r.Body)
	}
}

func TestStopSandbox(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()
	r, err := h.client.StopSandboxWithResponse(ctx, "box-1", api.StopSandboxRequest{TimeoutSeconds: ptr(int64(5))})
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200.State != api.SandboxStateStopped || h.sandboxes.stops[0] != 5*time.Second {
		t.Fatalf("stop: %d %s %v", r.StatusCode(), r.Body, h.sandboxes.stops)
	}
	r, err = h.client.StopSandboxWithBodyWithResponse(ctx, "box-1", "application/json", nil)
	must(t, err)
	if r.StatusCode() != 200 || h.sandboxes.stops[1] != 0 {
		t.Errorf("stop without a body: %d %s", r.StatusCode(), r.Body)
	}
	c := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	r, err = c.StopSandboxWithResponse(ctx, "box-1", api.StopSandboxRequest{TimeoutSeconds: ptr(int64(-1))})
	must(t, err)
	if r.StatusCode() != 400 || !strings.Contains(r.JSON400.Message, `"timeout_seconds"`) {
		t.Errorf("negative timeout: %d %s", r.StatusCode(), r.Body)
	}
}

func TestListSandboxesFilters(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()
	r, err := h.client.ListSandboxesWithResponse(ctx, &api.ListSandboxesParams{Label: &[]string{"a=b", "c="}})
	must(t, err)
	if r.StatusCode() != 200 || r.JSON200 == nil || r.JSON200.Sandboxes == nil {
		t.Fatalf("list: %d %s", r.StatusCode(), r.Body)
	}
	c := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	r, err = c.ListSandboxesWithResponse(ctx, &api.ListSandboxesParams{Label: &[]string{"novalue"}})
	must(t, err)
	if r.StatusCode() != 400 || !strings.Contains(r.JSON400.Message, `"label"`) {
		t.Errorf("bad label: %d %s", r.StatusCode(), r.Body)
	}
	r, err = c.ListSandboxesWithResponse(ctx, &api.ListSandboxesParams{State: ptr(api.SandboxState("sleeping"))})
	must(t, err)
	if r.StatusCode() != 400 || !strings.Contains(r.JSON400.Message, `"state"`) || !strings.Contains(r.JSON400.Message, "ready") {
		t.Errorf("bad state: %d %s", r.StatusCode(), r.Body)
	}
}

// TestRunStreamsNDJSON: output in order, streams apart, bytes exact
// (base64), the exit code last.
func TestRunStreamsNDJSON(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{code: 3, output: []sandbox.Output{
		{Stream: sandbox.StreamStdout, Data: []byte("out\x00\xff")},
		{Stream: sandbox.StreamStderr, Data: []byte("err\n")},
	}}
	resp, err := h.client.RunInSandbox(context.Background(), "box-1",
		api.RunRequest{Cmd: []string{"sh"}, TimeoutSeconds: ptr(int64(2)), Tty: ptr(true), Env: &map[string]string{"A": "1"}})
	must(t, err)
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	resp.Body.Close()
	want := `{"stream":"stdout","data":"b3V0AP8="}` + "\n" + `{"stream":"stderr","data":"ZXJyCg=="}` + "\n" + `{"stream":"exit","exit_code":3,"done":true}` + "\n"
	if resp.StatusCode != 200 || string(body) != want || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if p := h.sandboxes.runs[0]; p.Timeout != 2*time.Second || !p.TTY || p.Env["A"] != "1" {
		t.Errorf("process %+v", p)
	}
	c := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	for body, field := range map[string]string{`{"cmd":[""]}`: `"cmd"`, `{"cmd":["x"],"timeout_seconds":-1}`: `"timeout_seconds"`} {
		r, err := c.RunInSandboxWithBody(context.Background(), "box-1", "application/json", strings.NewReader(body))
		must(t, err)
		var e api.Error
		err = json.NewDecoder(r.Body).Decode(&e)
		_ = r.Body.Close()
		if r.StatusCode != 400 || err != nil || !strings.Contains(e.Message, field) {
			t.Errorf("%s: %d %+v (%v)", body, r.StatusCode, e, err)
		}
	}
}

// Exec echoes stdin back as stdout until it ends, then reports the sizes
// it saw as stderr, like a cat on a terminal that prints its resizes.
func (f *fakeSandboxes) Exec(ctx context.Context, id string, p sandbox.Process, eio sandbox.ExecIO, out func(sandbox.Output) error) (int, error) {
	if eio.Stdin == nil {
		return f.Run(ctx, id, p, out) // an Exec without input is a Run, as the manager's
	}
	if f.err != nil {
		return 0, f.err
	}
	f.runs = append(f.runs, p)
	var sizes []string
	if eio.Size != nil {
		sizes = append(sizes, fmt.Sprintf("%dx%d", eio.Size.Width, eio.Size.Height))
	}
	buf := make([]byte, 64)
	for {
		n, err := eio.Stdin.Read(buf)
		if n > 0 {
			if err := out(sandbox.Output{Stream: sandbox.StreamStdout, Data: buf[:n]}); err != nil {
				return 137, err
			}
		}
		for drained := false; !drained; {
			select {
			case s := <-eio.Resize:
				sizes = append(sizes, fmt.Sprintf("%dx%d", s.Width, s.Height))
			default:
				drained = true
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return 137, ctx.Err()
			}
			break
		}
	}
	if err := out(sandbox.Output{Stream: sandbox.StreamStderr, Data: []byte(strings.Join(sizes, ","))}); err != nil {
		return 137, err
	}
	return f.code, nil
}

// TestExecWebSocket drives the exec protocol over a real WebSocket: init,
// stdin, resize, close_stdin in; output and the exit code out.
func TestExecWebSocket(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{code: 7}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.url, "http")+"/v1/sandboxes/box-1/exec", nil)
	must(t, err)
	defer func() { _ = c.CloseNow() }()
	send := func(m string) {
		t.Helper()
		must(t, c.Write(ctx, websocket.MessageText, []byte(m)))
	}
	read := func() api.OutputMessage {
		t.Helper()
		_, b, err := c.Read(ctx)
		must(t, err)
		var m api.OutputMessage
		must(t, json.Unmarshal(b, &m))
		return m
	}
	send(`{"init":{"cmd":["cat"],"tty":true,"tty_size":{"width":80,"height":24}}}`)
	send(`{"stdin":"aGVsbG8="}`) // hello
	if m := read(); m.Stream != api.Stdout || string(*m.Data) != "hello" {
		t.Fatalf("echo: %+v", m)
	}
	send(`{"resize":{"width":132,"height":43}}`)
	send(`{"stdin":"IQ=="}`) // !
	if m := read(); string(*m.Data) != "!" {
		t.Fatalf("second echo: %+v", m)
	}
	send(`{"close_stdin":true}`)
	if m := read(); m.Stream != api.Stderr || string(*m.Data) != "80x24,132x43" {
		t.Errorf("sizes: %+v", m)
	}
	if m := read(); m.Stream != api.Exit || *m.ExitCode != 7 || !*m.Done {
		t.Errorf("exit: %+v", m)
	}
	if p := h.sandboxes.runs[0]; !p.TTY || p.Cmd[0] != "cat" {
		t.Errorf("process %+v", p)
	}

	// A first message that is not init closes with 4400 naming the rule.
	c2, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.url, "http")+"/v1/sandboxes/box-1/exec", nil)
	must(t, err)
	defer func() { _ = c2.CloseNow() }()
	must(t, c2.Write(ctx, websocket.MessageText, []byte(`{"stdin":"eA=="}`)))
	_, _, err = c2.Read(ctx)
	if websocket.CloseStatus(err) != 4400 || !strings.Contains(err.Error(), "first message must be") {
		t.Errorf("not init first: %v", err)
	}

	// An unknown sandbox is a 404 before any upgrade.
	h.sandboxes.err = fmt.Errorf("sandbox %q: %w", "nope", sandbox.ErrNotFound)
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.url, "http")+"/v1/sandboxes/nope/exec", nil)
	if err == nil || resp == nil || resp.StatusCode != 404 {
		t.Errorf("unknown sandbox: %v %v", err, resp)
	}
}

// TestCreateSandboxSecurity: the defaults are the strictest; asking for
// less is passed on, and every answer about a sandbox says how it is
// confined, the list included.
func TestCreateSandboxSecurity(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()
	for _, tc := range []struct {
		id   string
		sec  *api.SecuritySpec
		want sandbox.Security
	}{
		{"default", nil, sandbox.Security{}},
		{"empty", &api.SecuritySpec{}, sandbox.Security{}},
		{"userns", &api.SecuritySpec{UserNamespace: ptr(true), ReadOnlyRootfs: ptr(false)}, sandbox.Security{}},
		{"host-users", &api.SecuritySpec{UserNamespace: ptr(false), ReadOnlyRootfs: ptr(true)}, sandbox.Security{HostUsers: true, ReadOnlyRootfs: true}},
	} {
		r, err := h.client.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Id: ptr(tc.id), Security: tc.sec})
		must(t, err)
		if r.StatusCode() != 202 {
			t.Fatalf("%s: %d %s", tc.id, r.StatusCode(), r.Body)
		}
		if got := h.sandboxes.created[len(h.sandboxes.created)-1].Security; got != tc.want {
			t.Errorf("%s: security %+v, want %+v", tc.id, got, tc.want)
		}
	}
	if !strings.Contains(h.logs.String(), `"sandbox":"host-users","user_namespace":false`) {
		t.Errorf("a create without a user namespace is not in the log:\n%s", h.logs)
	}

	l, err := h.client.ListSandboxesWithResponse(ctx, &api.ListSandboxesParams{})
	must(t, err)
	if l.StatusCode() != 200 || len(l.JSON200.Sandboxes) != 4 {
		t.Fatalf("list: %d %s", l.StatusCode(), l.Body)
	}
	for _, s := range l.JSON200.Sandboxes {
		host := s.Id == "host-users"
		if s.Security == nil || s.Security.UserNamespace == host || (s.Security.IdMap == nil) != host || s.Security.ReadOnlyRootfs != host {
			t.Errorf("list: %s's security is %s", s.Id, l.Body)
		}
	}

	g, err := h.client.GetSandboxWithResponse(ctx, "box-1")
	must(t, err)
	sec := g.JSON200.Security
	if g.StatusCode() != 200 || sec == nil || !sec.UserNamespace || sec.IdMap == nil || *sec.IdMap != (api.IDMap{HostId: 100000, Size: 65536}) ||
		!sec.NoNewPrivileges || !sec.Seccomp || sec.ReadOnlyRootfs || strings.Join(sec.Capabilities, ",") != "CAP_CHOWN,CAP_KILL" ||
		*g.JSON200.Limits.Pids != 1024 {
		t.Errorf("get: %d %s", g.StatusCode(), g.Body)
	}
}

// TestRegistryAuth: credentials reach the manager with the image, are
// refused with a 400 naming the field when malformed or without an image,
// and never appear in an answer (errors included) or in the log.
func TestRegistryAuth(t *testing.T) {
	h := newHarness(t, true)
	h.sandboxes = &fakeSandboxes{}
	ctx := context.Background()
	const user, pass, idTok, regTok = "cred-user-7f3a", "cred-pass-9b1c", "cred-identity-2d8e", "cred-registry-5a0f"
	secrets := []string{user, pass, idTok, regTok}
	var answers []string

	r, err := h.client.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Id: ptr("box-1"), Image: ptr("registry.test/app:1"),
		RegistryAuth: &api.RegistryAuth{Username: ptr(user), Password: ptr(pass)}})
	must(t, err)
	if r.StatusCode() != 202 {
		t.Fatalf("create: %d %s", r.StatusCode(), r.Body)
	}
	answers = append(answers, string(r.Body))
	if got := h.sandboxes.created[0].RegistryAuth; got == nil || *got != (sandbox.RegistryAuth{Username: user, Password: pass}) {
		t.Errorf("credentials reached the manager as %+v", got)
	}
	for _, a := range []api.RegistryAuth{{IdentityToken: ptr(idTok)}, {RegistryToken: ptr(regTok)}} {
		r, err := h.client.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Image: ptr("registry.test/app:1"), RegistryAuth: &a})
		must(t, err)
		answers = append(answers, string(r.Body))
		got := h.sandboxes.created[len(h.sandboxes.created)-1].RegistryAuth
		if r.StatusCode() != 202 || got == nil || got.IdentityToken != deref(a.IdentityToken) || got.RegistryToken != deref(a.RegistryToken) {
			t.Errorf("create with %+v: %d %s, reached the manager as %+v", a, r.StatusCode(), r.Body, got)
		}
	}

	raw := apitest.NewClientWith(t, h.url, &apitest.Transport{T: t, SkipRequestValidation: true})
	created := len(h.sandboxes.created)
	for _, tc := range []struct {
		body, inMsg string
	}{
		{`{"registry_auth":{"username":"` + user + `","password":"` + pass + `"}}`, `field "registry_auth" is only for an image pull`},
		{`{"image":"","registry_auth":{"registry_token":"` + regTok + `"}}`, `field "registry_auth" is only for an image pull`},
		{`{"image":"a","registry_auth":{}}`, `field "registry_auth" is empty`},
		{`{"image":"a","registry_auth":{"username":"` + user + `"}}`, `"username" and "password" come together`},
		{`{"image":"a","registry_auth":{"password":"` + pass + `"}}`, `"username" and "password" come together`},
		{`{"image":"a","registry_auth":{"username":"` + user + `","password":"` + pass + `","identity_token":"` + idTok + `"}}`, `only one of`},
		{`{"image":"a","registry_auth":{"identity_token":"` + idTok + `","registry_token":"` + regTok + `"}}`, `only one of`},
		{`{"image":"a","registry_auth":{"registry_token":""}}`, `field "registry_auth.registry_token" is empty`},
		{`{"image":"a","registry_auth":{"password":"` + pass + strings.Repeat("x", 4097) + `","username":"u"}}`,
			`field "registry_auth.password" is 4111 characters long; at most 4096`},
		{`{"image":"a","registry_auth":{"password":"` + pass + `","username":"u","token":"` + regTok + `"}}`, `unknown field "registry_auth.token"`},
		{`{"image":"a","registry_auth":{"password":"` + pass + `","username":"u","password":"` + pass + `"}}`, `key "password" is given twice`},
	} {
		r, err := raw.CreateSandboxWithBodyWithResponse(ctx, "application/json", strings.NewReader(tc.body))
		must(t, err)
		if r.StatusCode() != 400 || r.JSON400 == nil || !strings.Contains(r.JSON400.Message, tc.inMsg) {
			t.Errorf("%.120s: %d %s, want 400 with %q", tc.body, r.StatusCode(), r.Body, tc.inMsg)
		}
		answers = append(answers, string(r.Body))
	}
	if len(h.sandboxes.created) != created {
		t.Errorf("refused credentials reached the manager")
	}

	g, err := h.client.GetSandboxWithResponse(ctx, "box-1")
	must(t, err)
	l, err := h.client.ListSandboxesWithResponse(ctx, &api.ListSandboxesParams{})
	must(t, err)
	if g.StatusCode() != 200 || l.StatusCode() != 200 || len(l.JSON200.Sandboxes) != 3 {
		t.Fatalf("get %d %s; list %d %s", g.StatusCode(), g.Body, l.StatusCode(), l.Body)
	}
	answers = append(answers, string(g.Body), string(l.Body))
	for _, s := range secrets {
		for _, a := range answers {
			if strings.Contains(a, s) {
				t.Errorf("a credential is in an answer: %s", a)
			}
		}
		if strings.Contains(h.logs.String(), s) {
			t.Errorf("a credential is in the log:\n%s", h.logs)
		}
	}
	if strings.Contains(string(g.Body), "registry_auth") || strings.Contains(string(l.Body), "registry_auth") {
		t.Errorf("registry_auth is echoed: %s %s", g.Body, l.Body)
	}

	// A manager's error that quotes a credential (a registry's answer,
	// say) keeps its status and loses the credential.
	h.sandboxes.err = fmt.Errorf(`field "image": pull: registry said "bad token %s": %w`, regTok, sandbox.ErrInvalid)
	r, err = h.client.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Image: ptr("registry.test/app:1"),
		RegistryAuth: &api.RegistryAuth{RegistryToken: ptr(regTok)}})
	must(t, err)
	if r.StatusCode() != 400 || strings.Contains(string(r.Body), regTok) || !strings.Contains(string(r.Body), `bad token [redacted]`) {
		t.Errorf("an error quoting the token: %d %s, want 400 without it", r.StatusCode(), r.Body)
	}
	if strings.Contains(h.logs.String(), regTok) {
		t.Errorf("a credential is in the log:\n%s", h.logs)
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
