package sandbox

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
)

func TestImageConfigFields(t *testing.T) {
	for _, c := range []struct {
		entrypoint, cmd, want []string
	}{
		{[]string{"python", "-u"}, []string{"app.py"}, []string{"python", "-u", "app.py"}},
		{nil, []string{"sh"}, []string{"sh"}},
		{[]string{"/entry"}, nil, []string{"/entry"}},
		{nil, nil, nil},
		{[]string{""}, []string{"x"}, nil}, // no program: nothing to run
	} {
		if got := NewImageConfig(c.entrypoint, c.cmd, nil, "", "").Command(); !slices.Equal(got, c.want) {
			t.Errorf("Command of %q + %q = %q, want %q", c.entrypoint, c.cmd, got, c.want)
		}
	}
	cfg := NewImageConfig(nil, nil, []string{"A=1", "NOVALUE", "=x", "B=", "A=2", "C=a=b"}, "srv/app", "app:staff")
	if want := map[string]string{"A": "2", "B": "", "C": "a=b"}; !maps.Equal(cfg.EnvMap(), want) {
		t.Errorf("EnvMap = %v, want %v", cfg.EnvMap(), want)
	}
	if cfg.WorkingDir != "/srv/app" || cfg.User != "app:staff" {
		t.Errorf("working dir %q, user %q", cfg.WorkingDir, cfg.User)
	}
	// The image's lists are copied, not shared.
	entry := []string{"a"}
	cfg = NewImageConfig(entry, nil, nil, "", "")
	entry[0] = "b"
	if cfg.Entrypoint[0] != "a" {
		t.Error("NewImageConfig shares the entrypoint's array")
	}
}

// imageBackend is the fake backend with the image configs of its
// sandboxes, by id, as the OCI backend keeps them.
type imageBackend struct {
	*fakeBackend
	mu      sync.Mutex
	configs map[string]*ImageConfig
	err     error
}

func (b *imageBackend) ImageConfig(id string) (*ImageConfig, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.configs[id], b.err
}

// newImageHarness is a harness whose backend keeps image configs.
func newImageHarness(t *testing.T) (*harness, *imageBackend) {
	h := &harness{t: t, backend: newFakeBackend(), clock: newFakeClock(), dir: t.TempDir()}
	b := &imageBackend{fakeBackend: h.backend, configs: map[string]*ImageConfig{}}
	m, err := newManager(context.Background(), Config{StateDir: h.dir, IDRangeDir: t.TempDir(), Now: h.clock.Now}, b, h.clock.AfterFunc)
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	t.Cleanup(func() { m.Close(context.Background()) })
	return h, b
}

// waitReady waits until sandbox id is ready.
func waitReady(t *testing.T, m *Manager, id string) {
	t.Helper()
	sandboxtest.WaitFor(t, id+" ready", func() bool { info, _ := m.Get(id); return info.State == StateReady })
}

// TestResolveCmd: a process without cmd runs its image's entrypoint and
// cmd; one with cmd runs it as given; without a command to run the error
// names cmd, and says what is missing.
func TestResolveCmd(t *testing.T) {
	h, b := newImageHarness(t)
	b.configs["py"] = &ImageConfig{Entrypoint: []string{"echo"}, Cmd: []string{"from", "image"}}
	b.configs["bare"] = &ImageConfig{Env: []string{"A=1"}}
	for _, s := range []Spec{{ID: "py", Image: "reg.test/py:1"}, {ID: "bare", Image: "reg.test/bare:1"}, {ID: "dir"}} {
		if _, _, err := h.m.Create(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		waitReady(t, h.m, s.ID)
	}

	p, err := h.m.ResolveCmd("py", Process{Env: map[string]string{"B": "2"}})
	if err != nil || !slices.Equal(p.Cmd, []string{"echo", "from", "image"}) || p.Env["B"] != "2" {
		t.Fatalf("ResolveCmd without cmd: %+v, %v", p, err)
	}
	var c collect
	if code, err := h.m.Run(context.Background(), "py", p, c.out); err != nil || code != 0 || c.stdout.String() != "[from image]\n" {
		t.Errorf("the image's command: code %d, %v, stdout %q", code, err, c.stdout.String())
	}
	if p, err := h.m.ResolveCmd("py", Process{Cmd: []string{"sh", "-c", "x"}}); err != nil || !slices.Equal(p.Cmd, []string{"sh", "-c", "x"}) {
		t.Errorf("a given cmd is not run as given: %q, %v", p.Cmd, err)
	}
	for _, c := range []struct{ id, want string }{
		{"bare", "sets no entrypoint or cmd"},
		{"dir", "not made from an image"},
	} {
		if _, err := h.m.ResolveCmd(c.id, Process{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"cmd"`) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a 400 naming cmd saying %q", c.id, err, c.want)
		}
	}
	if _, err := h.m.ResolveCmd("nosuch", Process{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("an unknown sandbox: %v", err)
	}

	if cfg, err := h.m.ImageConfig("dir"); cfg != nil || err != nil {
		t.Errorf("a sandbox made from a directory has an image config: %v, %v", cfg, err)
	}
	if cfg, err := h.m.ImageConfig("py"); err != nil || cfg == nil || !slices.Equal(cfg.Cmd, []string{"from", "image"}) {
		t.Errorf("ImageConfig: %+v, %v", cfg, err)
	}
	b.mu.Lock()
	b.err = errors.New("backend.json: unreadable")
	b.mu.Unlock()
	if _, err := h.m.ImageConfig("py"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("a backend that cannot read the config: %v", err)
	}
}

// TestResolveCmdStarting: while a sandbox starts its image is not read
// yet: a run without cmd is refused as any run then is, 409.
func TestResolveCmdStarting(t *testing.T) {
	h, _ := newImageHarness(t)
	h.backend.startGate = make(chan struct{})
	defer close(h.backend.startGate)
	if _, _, err := h.m.Create(context.Background(), Spec{ID: "slow", Image: "reg.test/x:1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.ResolveCmd("slow", Process{}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "starting") {
		t.Errorf("a starting sandbox: %v", err)
	}
}

// TestResolveCmdWithoutImageConfigs: a backend that keeps no image
// configs has none to give: a run without cmd is a 400 naming it.
func TestResolveCmdWithoutImageConfigs(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "img", Image: "reg.test/x:1"})
	if cfg, err := h.m.ImageConfig("img"); cfg != nil || err != nil {
		t.Errorf("ImageConfig: %v, %v", cfg, err)
	}
	if _, err := h.m.ResolveCmd("img", Process{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"cmd"`) {
		t.Errorf("ResolveCmd: %v", err)
	}
}
