package lifecycle

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// probeSet is a Probe answering from a set of reachable paths.
func probeSet(reachable ...string) func(context.Context, string, string) error {
	return func(_ context.Context, _, path string) error {
		if slices.Contains(reachable, path) {
			return nil
		}
		return errors.New("connection refused")
	}
}

func TestStatusDetails(t *testing.T) {
	dir := shortTempDir(t)
	base := testConfig(t, dir)
	csock, dsock, bin := base.ContainerdSocket, base.DockerSocket, base.RuntimeBinDir
	if err := os.MkdirAll(filepath.Dir(dsock), 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name         string
		reachable    []string
		dockerFile   bool     // a file is where dockerd's socket goes
		missing      []string // binaries removed from the bin dir
		wantDetail   string
		wantServices []Service
	}{
		{
			name:       "socket missing",
			wantDetail: "docker socket missing: " + dsock,
			wantServices: []Service{
				{Containerd, ServiceNotReady, "no reachable socket found; checked: " + csock},
				{Dockerd, ServiceNotReady, "socket missing: " + dsock},
			},
		},
		{
			name:       "missing binaries",
			missing:    []string{"dockerd", "runc"},
			wantDetail: "docker socket missing: " + dsock + "; missing runtime binaries under " + bin + ": dockerd, runc",
			wantServices: []Service{
				{Containerd, ServiceNotReady, "no reachable socket found; checked: " + csock},
				{Dockerd, ServiceNotReady, "socket missing: " + dsock},
			},
		},
		{
			name:       "socket exists but not reachable",
			dockerFile: true,
			missing:    []string{"runc"}, // the seed reports the socket first
			wantDetail: "docker socket exists but not reachable: " + dsock,
			wantServices: []Service{
				{Containerd, ServiceNotReady, "no reachable socket found; checked: " + csock},
				{Dockerd, ServiceError, "socket exists but not reachable: " + dsock},
			},
		},
		{
			name:       "containerd only",
			reachable:  []string{csock},
			wantDetail: "docker socket missing: " + dsock,
			wantServices: []Service{
				{Containerd, ServiceReady, "socket reachable: " + csock},
				{Dockerd, ServiceNotReady, "socket missing: " + dsock},
			},
		},
		{
			name:       "ready",
			reachable:  []string{csock, dsock},
			dockerFile: true,
			wantDetail: "docker socket ready",
			wantServices: []Service{
				{Containerd, ServiceReady, "socket reachable: " + csock},
				{Dockerd, ServiceReady, "socket reachable: " + dsock},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.RuntimeBinDir = filepath.Join(t.TempDir(), "bin")
			if err := os.MkdirAll(cfg.RuntimeBinDir, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, b := range requiredBinaries {
				if !slices.Contains(tt.missing, b) {
					if err := os.WriteFile(filepath.Join(cfg.RuntimeBinDir, b), nil, 0o755); err != nil {
						t.Fatal(err)
					}
				}
			}
			tt.wantDetail = strings.ReplaceAll(tt.wantDetail, bin, cfg.RuntimeBinDir)
			os.Remove(dsock)
			if tt.dockerFile {
				if err := os.WriteFile(dsock, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cfg.Probe = probeSet(tt.reachable...)
			r, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			st := r.Status(context.Background())
			if st.Detail != tt.wantDetail {
				t.Errorf("detail:\n got %q\nwant %q", st.Detail, tt.wantDetail)
			}
			if !slices.Equal(st.Services, tt.wantServices) {
				t.Errorf("services:\n got %+v\nwant %+v", st.Services, tt.wantServices)
			}
			if st.Endpoint != "vsock:2375" {
				t.Errorf("endpoint: got %q", st.Endpoint)
			}
			if st.ContainerdReady != slices.Contains(tt.reachable, csock) || st.DockerReady != slices.Contains(tt.reachable, dsock) {
				t.Errorf("ready flags: %+v", st)
			}
		})
	}
}

// TestStatusRealSocketProbe uses the default probe: a socket file nobody
// listens on is "exists but not reachable", and so is a listener that
// does not answer /_ping (dockerd between binding its socket and serving
// its API); one that answers is ready.
func TestStatusRealSocketProbe(t *testing.T) {
	dir := shortTempDir(t)
	cfg := testConfig(t, dir)
	// A listener that never answers is waited for this long (whatever
	// the load: it never answers).
	cfg.ProbeTimeout = 100 * time.Millisecond
	if err := os.MkdirAll(filepath.Dir(cfg.DockerSocket), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", cfg.DockerSocket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st := r.Status(context.Background()); st.DockerReady || st.Detail != "docker socket exists but not reachable: "+cfg.DockerSocket {
		t.Fatalf("stale socket: %+v", st)
	}
	os.Remove(cfg.DockerSocket)
	ln, err = net.Listen("unix", cfg.DockerSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Listening, connections queue, nothing answers: not ready.
	if st := r.Status(context.Background()); st.DockerReady || st.Detail != "docker socket exists but not reachable: "+cfg.DockerSocket {
		t.Fatalf("a socket that does not answer /_ping: %+v", st)
	}
	go serveFakeDocker(ln)
	// Answering: ready, however long a loaded machine takes to answer.
	cfg.ProbeTimeout = time.Minute
	if r, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(context.Background()); !st.DockerReady || st.Detail != "docker socket ready" {
		t.Fatalf("listening socket: %+v", st)
	}
}

func TestProbeOnlyEnsureReportsStatus(t *testing.T) {
	cfg := testConfig(t, shortTempDir(t))
	cfg.StartProcess = nil
	cfg.Probe = probeSet()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res := r.Ensure(context.Background(), false)
	if res.Ready || res.Status != StatusFailed || res.Message != "docker socket missing: "+cfg.DockerSocket || res.Endpoint != "vsock:2375" {
		t.Fatalf("probe: %+v", res)
	}
	r.cfg.Probe = probeSet(cfg.DockerSocket)
	res = r.Ensure(context.Background(), false)
	if !res.Ready || res.Status != StatusReused || res.Message != "docker socket ready" {
		t.Fatalf("probe with dockerd up: %+v, want reused", res)
	}
}

func TestNewDefaults(t *testing.T) {
	r, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := r.cfg
	for got, want := range map[string]string{
		c.RuntimeBinDir: "/arcbox/runtime/bin", c.ContainerdSocket: "/run/containerd/containerd.sock",
		c.DockerSocket: "/var/run/docker.sock", c.Endpoint: "vsock:2375", c.ContainerdRoot: "/var/lib/containerd",
		c.ContainerdState: "/run/containerd", c.ContainerdConfig: "/etc/containerd/config.toml",
		c.DockerDataRoot: "/var/lib/docker", c.DockerExecRoot: "/var/run/docker", c.SystemRoot: "/",
	} {
		if got != want {
			t.Errorf("default: got %q, want %q", got, want)
		}
	}
	if c.ContainerdTimeout != DefaultContainerdTimeout || c.DockerdTimeout != DefaultDockerdTimeout || c.StopGrace != DefaultStopGrace || c.ProbeTimeout != DefaultProbeTimeout {
		t.Errorf("default durations: %v %v %v %v", c.ContainerdTimeout, c.DockerdTimeout, c.StopGrace, c.ProbeTimeout)
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
