package vm

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// untilTestEnds is a context for a step of the guest that has no bound of
// its own: an emulated guest on a loaded host may be many times slower
// than on an idle one, so the step may take until a minute before the
// test binary's own deadline, which then still has time to say what
// happened.
func untilTestEnds(t *testing.T) (context.Context, context.CancelFunc) {
	if d, ok := t.Deadline(); ok {
		return context.WithDeadline(context.Background(), d.Add(-time.Minute))
	}
	return context.WithCancel(context.Background())
}

// btrfsMagic is btrfs's filesystem type as statfs(2) gives it, in hex;
// btrfsSubvolumeInode is the inode number of every subvolume's root.
const (
	btrfsMagic          = "9123683e"
	btrfsSubvolumeInode = "256"
)

// checkSandbox makes a sandbox in the guest, where the agent is PID 1 and
// runc comes from the runtime directory, and runs a command in it: the
// default root filesystem is made from the guest's busybox, the sandbox's
// init starts the command, and its output and exit code come back. Then it
// checkpoints the sandbox and restores it: the snapshot is a btrfs
// subvolume on the data volume, which is what makes a restore cheaper
// than a create; the times of both are logged, not held to a ratio. It
// returns the snapshot's id; the snapshot is kept.
func (g *guest) checkSandbox(t *testing.T) string {
	t.Helper()
	ctx, cancel := untilTestEnds(t)
	defer cancel()
	began := time.Now()
	c, err := g.client.CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Id: agenttest.Ptr("vm-box")})
	if err != nil {
		t.Fatalf("create a sandbox in the guest: %v", err)
	} else if c.JSON202 == nil {
		t.Fatalf("create a sandbox in the guest: %s %s", c.Status(), c.Body)
	}
	sb := g.waitSandboxReady(ctx, t, "vm-box")
	created := time.Since(began)
	t.Logf("sandbox create to ready in the guest: %v", created.Round(time.Millisecond))
	// By default a sandbox's root is not the guest's.
	sec := agenttest.Deref(sb.Security)
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

	began = time.Now()
	stdout, code := g.sandboxRun(ctx, t, "vm-box", "echo kept > /tmp/state; echo hi from $(hostname); exit 4")
	t.Logf("run in the guest's sandbox took %v", time.Since(began).Round(time.Millisecond))
	if stdout != "hi from vm-box\n" || code != 4 {
		t.Errorf("run in the guest's sandbox: stdout %q, exit %d; want hi from vm-box, 4", stdout, code)
	}

	ck, err := g.client.CheckpointSandboxWithResponse(ctx, "vm-box", api.CheckpointRequest{})
	if err != nil {
		t.Fatalf("checkpoint the guest's sandbox: %v", err)
	} else if ck.JSON201 == nil {
		t.Fatalf("checkpoint the guest's sandbox: %s %s", ck.Status(), ck.Body)
	}
	snap := ck.JSON201
	began = time.Now()
	rs, err := g.client.RestoreSnapshotWithResponse(ctx, snap.SnapshotId, api.RestoreRequest{Id: agenttest.Ptr("vm-box-restored")})
	restored := time.Since(began)
	if err != nil {
		t.Fatalf("restore the guest's sandbox: %v", err)
	} else if rs.JSON201 == nil {
		t.Fatalf("restore the guest's sandbox: %s %s", rs.Status(), rs.Body)
	}
	t.Logf("restore to ready in the guest: %v, %.2fx the create's %v (the aim: at most 0.5x)",
		restored.Round(time.Millisecond), restored.Seconds()/created.Seconds(), created.Round(time.Millisecond))
	if out, _ := g.sandboxRun(ctx, t, rs.JSON201.Id, "cat /tmp/state"); out != "kept\n" {
		t.Errorf("the restored sandbox has %q in /tmp/state, want what the original wrote before the checkpoint", out)
	}

	// The snapshot's layer is a subvolume of btrfs: made in constant time,
	// and restored by snapshotting it again.
	layer := snap.SnapshotDir + "/layer"
	if fs, ino := g.stat(t, layer); fs != btrfsMagic || ino != btrfsSubvolumeInode {
		t.Errorf("the snapshot's layer %s: filesystem %s, inode %s; want a btrfs (%s) subvolume (inode %s)",
			layer, fs, ino, btrfsMagic, btrfsSubvolumeInode)
	}

	force := true
	for _, id := range []string{"vm-box", rs.JSON201.Id} {
		if d, err := g.client.RemoveSandboxWithResponse(ctx, id, &api.RemoveSandboxParams{Force: &force}); err != nil || d.StatusCode() != 204 {
			t.Errorf("remove the guest's sandbox %s: %v %v", id, err, d)
		}
	}
	return snap.SnapshotId
}

// waitSandboxReady polls the sandbox until it is ready, and returns it.
func (g *guest) waitSandboxReady(ctx context.Context, t *testing.T, id string) *api.SandboxInfo {
	t.Helper()
	for {
		r, err := g.client.GetSandboxWithResponse(ctx, id)
		if err != nil {
			t.Fatalf("sandbox %s in the guest: %v", id, err)
		} else if r.JSON200 == nil {
			t.Fatalf("sandbox %s in the guest: %s %s", id, r.Status(), r.Body)
		}
		if st := r.JSON200.State; st == api.SandboxStateReady {
			return r.JSON200
		} else if st != api.SandboxStateStarting {
			t.Fatalf("the guest's sandbox %s is %s: %s", id, st, agenttest.Deref(r.JSON200.Error))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the guest's sandbox %s did not become ready", id)
		case <-time.After(20 * time.Millisecond): // a poll interval of a remote API, not a wait for a condition we could watch
		}
	}
}

// sandboxRun runs a shell command in a sandbox of the guest through the
// SDK, which reads the NDJSON stream, and returns its stdout and exit
// code.
func (g *guest) sandboxRun(ctx context.Context, t *testing.T, id, script string) (string, int) {
	t.Helper()
	var stdout bytes.Buffer
	code := -1
	for o, err := range g.sdk.Run(ctx, id, api.RunRequest{Cmd: []string{"sh", "-c", script}}) {
		switch {
		case err != nil:
			t.Fatalf("run in the guest's sandbox %s: %v", id, err)
		case o.Exit != nil:
			code = o.Exit.Code
		case o.Stream == "stdout":
			stdout.Write(o.Data)
		}
	}
	return stdout.String(), code
}

// stat asks the guest for the filesystem type (hex) and inode number of
// a path.
func (g *guest) stat(t *testing.T, path string) (fsType, inode string) {
	t.Helper()
	from := g.console.len()
	g.send(t, "stat "+path)
	line, ok := g.console.waitFrom(from, regexp.MustCompile(`^E2E-STAT: `+regexp.QuoteMeta(path)+` `), 30*time.Second)
	if !ok {
		t.Fatalf("the guest did not stat %s", path)
	}
	f := strings.Fields(strings.TrimPrefix(line, "E2E-STAT: "+path))
	if len(f) != 2 {
		t.Fatalf("the guest's stat of %s: %q", path, line)
	}
	return f[0], f[1]
}

// checkDockerRun loads a busybox image into the guest's dockerd through
// the agent's proxy and runs a container from it: on the guest's
// initramfs root that works only when dockerd chroots instead of
// pivot_root (DOCKER_RAMDISK, which the agent sets there). A second
// container reads, through a bind mount of the users share, the file the
// host wrote.
func (g *guest) checkDockerRun(t *testing.T, shares shareDirs) {
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
	src := usersMount + "/" + shares.userDir
	began = time.Now()
	out = g.docker(t, "run", "--rm", "--network", "none", "-v", src+":/data", "e2e/busybox:vm", "cat", "/data/"+helloFile)
	t.Logf("docker run -v %s:/data in the guest took %v", src, time.Since(began).Round(time.Millisecond))
	if out != shares.hello {
		t.Errorf("a container read %q from the host's %s, want %q", out, helloFile, shares.hello)
	}
}
