package sandbox

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// busyboxApplets are the commands the test image links to busybox.
var busyboxApplets = []string{"sh", "echo", "cat", "pwd", "true", "sleep", "ps", "ls", "dd", "head"}

// busyboxImage is a one-layer image made from this machine's static
// busybox: /bin/busybox and links to it, /etc/passwd, /etc/motd, /tmp, and
// /etc/build-id holding buildID (a different one makes a different
// image); its config sets PATH, GREETING and the working directory /srv.
func busyboxImage(t testing.TB, buildID string) v1.Image {
	t.Helper()
	return testregistry.Busybox{
		Applets: busyboxApplets,
		Dirs:    []string{"srv"},
		Files: map[string]string{
			"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\n",
			"etc/motd":     "baked in\n",
			"etc/build-id": buildID + "\n",
		},
		Config: v1.Config{Env: []string{"PATH=/bin", "GREETING=from-image"}, WorkingDir: "/srv", Cmd: []string{"/bin/sh"}},
	}.Image(t)
}

// TestImageFromLoopbackRegistry: a sandbox made from an image the test
// serves on 127.0.0.1 (plain HTTP, as the agent does for loopback
// registries; listed with --registry, as a loopback registry must be) on
// an agent of its own has the image's files and config (env, working directory);
// its writes stay its own, so a second sandbox of the image sees the
// image as pushed; the layer is downloaded once, then served from the
// agent's cache.
func TestImageFromLoopbackRegistry(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	reg := testregistry.New(t)
	a := ownAgent(t, &agentProc{Agent: &agenttest.Agent{Dir: filepath.Join(suite.dir, "image")}, registries: []string{reg.Host()}})
	// A new image each time: the agent's cache, keyed by digest, must
	// not have it already (go test -count=2).
	img := busyboxImage(t, time.Now().Format(time.RFC3339Nano))
	ref := reg.Host() + "/test/busybox:1"
	reg.Push(t, ref, img)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layerDigest, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}

	first := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("img-1"), Image: agenttest.Ptr(ref)})
	wantBin := append([]string{"busybox"}, busyboxApplets...)
	slices.Sort(wantBin)
	if got := strings.Fields(a.sh(t, first, "ls /bin")); !slices.Equal(got, wantBin) {
		t.Errorf("/bin holds %v, want the image's %v", got, wantBin)
	}
	res := a.run(t, first, api.RunRequest{Cmd: []string{"sh", "-c", `echo "$GREETING"; pwd; cat /etc/motd`}})
	if string(res.Stdout) != "from-image\n/srv\nbaked in\n" || res.Code != 0 {
		t.Errorf("in the image: stdout %q, stderr %q, exit %d; want the image's env, working dir and motd", res.Stdout, res.Stderr, res.Code)
	}
	if out := a.sh(t, first, "echo changed > /etc/motd; cat /etc/motd"); out != "changed\n" {
		t.Errorf("after writing /etc/motd: %q", out)
	}

	second := a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr("img-2"), Image: agenttest.Ptr(ref)})
	if out := a.sh(t, second, "cat /etc/motd"); out != "baked in\n" {
		t.Errorf("a second sandbox of the image reads /etc/motd %q, want the image's (the first sandbox's write leaked)", out)
	}
	if n := reg.Gets("/blobs/" + layerDigest.String()); n != 1 {
		t.Errorf("the layer was downloaded %d times for two sandboxes, want once", n)
	}
	a.remove(t, first, false)
	a.remove(t, second, false)
}

// TestAgentRestart: the agent is killed (SIGKILL) with two sandboxes alive
// and one of them dies while it is down. Started again on the same state,
// it re-adopts the live one (same init, its files, its labels and env; it
// runs commands and reports events) and marks the other failed with the
// reason; both are removed without a trace.
func TestAgentRestart(t *testing.T) {
	t.Parallel()
	a := ownAgent(t, newAgent(suite.dir+"/restart"))

	const live, dead = "survivor", "casualty"
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(live), Labels: &map[string]string{"keep": "yes"}, Env: &map[string]string{"FROM_CREATE": "kept"}})
	a.create(t, api.CreateSandboxRequest{Id: agenttest.Ptr(dead)})
	a.sh(t, live, "echo before > /tmp/mark")
	before := a.get(t, live)
	livePid, deadPid := a.initPid(t, live), a.initPid(t, dead)

	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := syscallKill(deadPid); err != nil {
		t.Fatalf("kill the init of %s: %v", dead, err)
	}
	if err := a.start(); err != nil {
		t.Fatal(err)
	}

	after := a.get(t, live)
	if after.State != "ready" || after.CreatedAt != before.CreatedAt || after.Labels == nil || (*after.Labels)["keep"] != "yes" ||
		after.LastExitCode == nil || *after.LastExitCode != 0 {
		t.Errorf("after the restart: %+v; before: %+v", after, before)
	}
	if pid := a.initPid(t, live); pid != livePid {
		t.Errorf("the init is %d after the restart, %d before: the sandbox was remade, not re-adopted", pid, livePid)
	}
	evs := a.events(t, api.StreamEventsParams{Id: agenttest.Ptr(live)})
	res := a.run(t, live, api.RunRequest{Cmd: []string{"sh", "-c", `echo "$FROM_CREATE"; cat /tmp/mark`}})
	if string(res.Stdout) != "kept\nbefore\n" || res.Code != 0 {
		t.Errorf("after the restart: stdout %q, stderr %q, exit %d; want kept, before, 0", res.Stdout, res.Stderr, res.Code)
	}
	evs.expect(live, "running", "idle")

	failed := a.get(t, dead)
	if failed.State != "failed" || failed.Error == nil || *failed.Error == "" {
		t.Errorf("the sandbox whose init died while the agent was down: %+v; want failed with the reason", failed)
	} else {
		t.Logf("%s: %s", dead, *failed.Error)
	}
	a.remove(t, dead, false)
	a.remove(t, live, false)
}
