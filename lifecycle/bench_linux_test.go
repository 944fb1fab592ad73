package lifecycle

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/dockerproxy"
)

// freshPaths points every state path of cfg into a new directory under
// dir, so each iteration starts cold; it returns a cleanup.
func freshPaths(b *testing.B, cfg *Config, dir string) func() {
	d, err := os.MkdirTemp(dir, "i")
	if err != nil {
		b.Fatal(err)
	}
	bin := cfg.RuntimeBinDir
	*cfg = testConfig(b, d)
	os.RemoveAll(cfg.RuntimeBinDir)
	cfg.RuntimeBinDir = bin
	return func() {
		unmountUnder(b, d)
		os.RemoveAll(d)
	}
}

// BenchmarkColdEnsure is a cold Ensure (containerd and dockerd started,
// dockerd's socket answering), with fresh state directories each time.
// Compare with BenchmarkHandStart.
func BenchmarkColdEnsure(b *testing.B) {
	e := setupReal(b)
	bin := e.cfg.RuntimeBinDir
	for b.Loop() {
		b.StopTimer()
		cfg := Config{RuntimeBinDir: bin}
		cleanup := freshPaths(b, &cfg, e.dir)
		r, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res := r.Ensure(context.Background(), true)
		b.StopTimer()
		if res.Status != StatusStarted {
			b.Fatalf("Ensure: %+v", res)
		}
		if err := r.Shutdown(context.Background()); err != nil {
			b.Fatal(err)
		}
		cleanup()
		b.StartTimer()
	}
}

// BenchmarkHandStart starts the same two daemons with the same flags by
// hand, waiting in a tight loop for containerd's socket to accept and for
// dockerd to answer /_ping: the floor for BenchmarkColdEnsure.
func BenchmarkHandStart(b *testing.B) {
	e := setupReal(b)
	bin := e.cfg.RuntimeBinDir
	spawn := func(cfg Config, name string, args ...string) *exec.Cmd {
		if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
			b.Fatal(err)
		}
		log, err := os.Create(filepath.Join(cfg.LogDir, name+".log"))
		if err != nil {
			b.Fatal(err)
		}
		defer log.Close()
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.Env = daemonEnv(bin)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		return cmd
	}
	waitTight := func(path string) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if c, err := net.Dial("unix", path); err == nil {
				c.Close()
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s never came up", path)
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
	for b.Loop() {
		b.StopTimer()
		cfg := Config{RuntimeBinDir: bin}
		cleanup := freshPaths(b, &cfg, e.dir)
		cfg.setDefaults()
		b.StartTimer()
		for _, d := range []string{cfg.ContainerdState, cfg.DockerExecRoot, filepath.Dir(cfg.ContainerdSocket), filepath.Dir(cfg.ContainerdConfig)} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(cfg.ContainerdConfig, []byte(containerdConfig), 0o644); err != nil {
			b.Fatal(err)
		}
		c := spawn(cfg, "containerd", "--config", cfg.ContainerdConfig, "--address", cfg.ContainerdSocket,
			"--state", cfg.ContainerdState, "--root", cfg.ContainerdRoot)
		waitTight(cfg.ContainerdSocket)
		d := spawn(cfg, "dockerd", "--host=unix://"+cfg.DockerSocket, "--containerd="+cfg.ContainerdSocket,
			"--exec-root="+cfg.DockerExecRoot, "--data-root="+cfg.DockerDataRoot, "--userland-proxy=false",
			"--pidfile="+filepath.Join(cfg.DockerExecRoot, "docker.pid"))
		for deadline := time.Now().Add(30 * time.Second); cfg.Probe(context.Background(), Dockerd, cfg.DockerSocket) != nil; {
			if time.Now().After(deadline) {
				b.Fatalf("dockerd never answered /_ping")
			}
			time.Sleep(500 * time.Microsecond)
		}
		b.StopTimer()
		for _, p := range []*exec.Cmd{d, c} {
			if err := p.Process.Signal(unix.SIGTERM); err != nil {
				b.Errorf("%s: %v", p.Path, err)
			}
			if err := p.Wait(); err != nil {
				b.Errorf("%s: %v", p.Path, err)
			}
		}
		cleanup()
		b.StartTimer()
	}
}

// BenchmarkDockerPing is GET /_ping against the real dockerd, on its
// socket and through dockerproxy, on one kept-alive connection.
func BenchmarkDockerPing(b *testing.B) {
	e := setupReal(b)
	r := startRuntime(b, e.cfg)
	if res := r.Ensure(context.Background(), true); !res.Ready {
		b.Fatalf("Ensure: %+v", res)
	}
	p, err := dockerproxy.New(dockerproxy.Config{Socket: e.cfg.DockerSocket})
	if err != nil {
		b.Fatal(err)
	}
	psock := filepath.Join(e.dir, "p.sock")
	ln, err := net.Listen("unix", psock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln) }()
	b.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			b.Errorf("Serve: %v", err)
		}
	})

	client := func(path string) *http.Client {
		return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}
	}
	ping := func(b *testing.B, c *http.Client) {
		for b.Loop() {
			resp, err := c.Get("http://docker/_ping")
			if err != nil {
				b.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "OK" {
				b.Fatalf("ping: %q", body)
			}
		}
	}
	b.Run("direct", func(b *testing.B) { ping(b, client(e.cfg.DockerSocket)) })
	b.Run("proxy", func(b *testing.B) { ping(b, client(psock)) })
}
