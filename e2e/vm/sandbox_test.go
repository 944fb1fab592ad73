package vm

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// checkSandbox makes a sandbox in the guest, where the agent is PID 1 and
// runc comes from the runtime directory, and runs a command in it: the
// default root filesystem is made from the guest's busybox, the sandbox's
// init starts the command, and its output and exit code come back.
func (g *guest) checkSandbox(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	began := time.Now()
	c, err := g.client.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Id: agenttest.Ptr("vm-box")})
	if err != nil || c.JSON202 == nil {
		t.Fatalf("create a sandbox in the guest: %v %s", err, c.Body)
	}
	for {
		r, err := g.client.GetSandboxWithResponse(ctx, "vm-box")
		if err != nil || r.JSON200 == nil {
			t.Fatalf("sandbox in the guest: %v %s", err, r.Body)
		}
		if st := r.JSON200.State; st == api.SandboxStateReady {
			// By default a sandbox's root is not the guest's.
			sec := agenttest.Deref(r.JSON200.Security)
			t.Logf("the guest's sandbox's security: %+v, id map %+v", sec, agenttest.Deref(sec.IdMap))
			if !sec.UserNamespace || sec.IdMap == nil || sec.IdMap.HostId == 0 {
				t.Errorf("the guest's sandbox's security: %+v, want a user namespace mapping root elsewhere", sec)
			}
			// Which lower layer the kernel allowed: an idmapped mount, or
			// (tmpfs before Linux 6.3) a copy owned by the range.
			if line, ok := g.console.wait(regexp.MustCompile(`has no idmapped mounts`), 0); ok {
				t.Logf("the guest's sandbox runs on a shifted copy of its root filesystem: %s", line)
			} else {
				t.Log("the guest's sandbox runs on an idmapped mount of its root filesystem")
			}
			break
		} else if st != api.SandboxStateStarting {
			t.Fatalf("the guest's sandbox is %s: %s", st, agenttest.Deref(r.JSON200.Error))
		}
		select {
		case <-ctx.Done():
			t.Fatal("the guest's sandbox did not become ready")
		case <-time.After(20 * time.Millisecond): // a poll interval of a remote API, not a wait for a condition we could watch
		}
	}
	t.Logf("sandbox create to ready in the guest: %v", time.Since(began).Round(time.Millisecond))

	began = time.Now()
	// The SDK reads the NDJSON stream.
	var stdout bytes.Buffer
	code := -1
	for o, err := range g.sdk.Run(ctx, "vm-box", api.RunRequest{Cmd: []string{"sh", "-c", "echo hi from $(hostname); exit 4"}}) {
		switch {
		case err != nil:
			t.Fatalf("run in the guest's sandbox: %v", err)
		case o.Exit != nil:
			code = o.Exit.Code
		case o.Stream == "stdout":
			stdout.Write(o.Data)
		}
	}
	t.Logf("run in the guest's sandbox took %v", time.Since(began).Round(time.Millisecond))
	if stdout.String() != "hi from vm-box\n" || code != 4 {
		t.Errorf("run in the guest's sandbox: stdout %q, exit %d; want hi from vm-box, 4", stdout.String(), code)
	}
	force := true
	if d, err := g.client.RemoveSandboxWithResponse(ctx, "vm-box", &api.RemoveSandboxParams{Force: &force}); err != nil || d.StatusCode() != 204 {
		t.Errorf("remove the guest's sandbox: %v %v", err, d)
	}
}

// checkDockerRun loads a busybox image into the guest's dockerd through
// the agent's proxy and runs a container from it: on the guest's
// initramfs root that works only when dockerd chroots instead of
// pivot_root (DOCKER_RAMDISK, which the agent sets there).
func (g *guest) checkDockerRun(t *testing.T) {
	t.Helper()
	img := testregistry.Busybox{Applets: []string{"sh", "echo", "cat"}}.Image(t)
	tag, err := name.NewTag("e2e/busybox:vm")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "busybox.tar")
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
	g.docker(t, "load", "-q", "-i", path)
	began := time.Now()
	out := g.docker(t, "run", "--rm", "--network", "none", "e2e/busybox:vm", "sh", "-c", "echo container says hi")
	t.Logf("docker run --rm in the guest took %v", time.Since(began).Round(time.Millisecond))
	if out != "container says hi" {
		t.Errorf("docker run in the guest printed %q", out)
	}
}
