package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// ensureTimeout bounds one POST /v1/runtime/ensure under TCG.
const ensureTimeout = 4 * time.Minute

// sparseFile makes a raw disk image of size bytes, all zero.
func sparseFile(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

// ensure asks the agent to start the runtime and says how long it took.
func (g *guest) ensure(t *testing.T) (*api.RuntimeEnsureResponse, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ensureTimeout)
	defer cancel()
	began := time.Now()
	r, err := g.client.EnsureRuntimeWithResponse(ctx, api.RuntimeEnsureRequest{})
	took := time.Since(began)
	if err != nil || r.JSON200 == nil {
		g.logDaemons(t)
		t.Fatalf("ensure after %v: %v %v", took, err, r)
	}
	return r.JSON200, took
}

func (g *guest) runtimeStatus(t *testing.T) *api.RuntimeStatus {
	t.Helper()
	r, err := g.client.GetRuntimeStatusWithResponse(context.Background())
	if err != nil || r.JSON200 == nil {
		t.Fatalf("runtime status: %v %v", err, r)
	}
	return r.JSON200
}

// service returns the named service of a runtime status.
func service(t *testing.T, st *api.RuntimeStatus, name string) api.ServiceStatus {
	t.Helper()
	for _, s := range st.Services {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("runtime status has no %s service: %+v", name, st.Services)
	return api.ServiceStatus{}
}

// logDaemons logs the end of the daemons' logs, for a failure.
func (g *guest) logDaemons(t *testing.T) {
	t.Helper()
	tail := 40
	for _, svc := range []string{"containerd", "dockerd"} {
		var lines []string
		for line, err := range g.sdk.RuntimeLogs(context.Background(), svc, client.LogsOptions{Tail: tail}) {
			if err != nil {
				lines = append(lines, fmt.Sprintf("(%v)", err))
				break
			}
			lines = append(lines, line)
		}
		t.Logf("%s log:\n%s", svc, strings.Join(lines, "\n"))
	}
}

// docker runs the host's docker CLI against the agent's Docker proxy,
// with the token in its config's HttpHeaders, sent on every request.
func (g *guest) docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := g.dockerWith(t, map[string]any{"HttpHeaders": map[string]string{"Authorization": "Bearer " + g.token}}, args...)
	if err != nil {
		t.Fatalf("DOCKER_HOST=%s docker %s: %v\n%s", g.dockerHost, strings.Join(args, " "), err, out)
	}
	return out
}

// dockerWith runs the host's docker CLI against the agent's Docker proxy
// with the config given, and returns its output: standard output alone
// when it succeeds, with standard error when it fails.
func (g *guest) dockerWith(t *testing.T, config map[string]any, args ...string) (string, error) {
	t.Helper()
	bin := testenv.RequireBinary(t, "docker")
	ctx, cancel := untilTestEnds(t)
	defer cancel()
	home := t.TempDir()
	b, err := json.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "DOCKER_CONFIG=" + home, "DOCKER_HOST=" + g.dockerHost}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return strings.TrimSpace(string(out)), nil
}

// phases returns the startup phases the metrics show, end offsets in
// seconds, for the names given.
func (g *guest) phases(t *testing.T, names ...string) map[string]string {
	t.Helper()
	m, err := g.client.GetMetricsWithResponse(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, phase := range names {
		re := regexp.MustCompile(`arcbox_agent_runtime_phase_duration_seconds\{phase="` + regexp.QuoteMeta(phase) + `"\} (\S+)`)
		if mm := re.FindSubmatch(m.Body); mm != nil {
			out[phase] = string(mm[1])
		}
	}
	return out
}

// guestMounts asks the guest for its btrfs and ext4 mounts, as
// "DEVICE DIR FSTYPE OPTIONS" lines.
func (g *guest) guestMounts(t *testing.T) []string {
	t.Helper()
	from := g.console.len()
	g.send(t, "mounts")
	if _, ok := g.console.waitFrom(from, regexp.MustCompile(`^E2E-MOUNTS: end`), 30*time.Second); !ok {
		t.Fatal("the guest did not list its mounts")
	}
	var mounts []string
	for _, line := range g.console.linesFrom(from) {
		if m, ok := strings.CutPrefix(line, "E2E-MOUNT: "); ok {
			mounts = append(mounts, m)
		}
	}
	return mounts
}

// checkZero fails the test unless the file is all zero bytes.
func checkZero(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.IndexFunc(data, func(r rune) bool { return r != 0 }); i >= 0 {
		t.Errorf("%s was written to (a non-zero byte at %d): the agent touched a disk that is not its data device", path, i)
	}
}

// checkDaemonsStopped fails the test unless the console shows that the
// agent stopped containerd and dockerd at power-off, and that neither
// exited on its own before.
func (g *guest) checkDaemonsStopped(t *testing.T) {
	t.Helper()
	for _, line := range g.console.linesFrom(0) {
		if strings.Contains(line, `"msg":"daemon exited"`) {
			t.Errorf("a daemon exited by itself: %s", line)
		}
	}
	for _, svc := range []string{"dockerd", "containerd"} {
		line, ok := g.console.wait(regexp.MustCompile(`"msg":"daemon stopped".*"service":"`+svc+`"`), 0)
		if !ok {
			t.Errorf("the console does not show %s stopped at power-off", svc)
			continue
		}
		t.Logf("at power-off: %s", line)
	}
}

// hostDockerdVersion is the version of the dockerd put in the image.
func hostDockerdVersion(t *testing.T) string {
	t.Helper()
	out := run(t, "", testenv.RequireBinary(t, "dockerd"), "--version")
	m := regexp.MustCompile(`version ([^,\s]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dockerd --version: %q", out)
	}
	return m[1]
}

// testDataVolume boots the runtime image, with the daemons on the arcbox
// share, on a blank data disk: starts the runtime through the agent, runs
// a container on a host directory and a sandbox checkpointed and restored
// on the volume, and powers off through the API, leaving a filesystem
// btrfs check finds clean; boots again on the same disk; then with an
// ext4 disk, which must be refused and left intact.
func testDataVolume(t *testing.T, im vmImage, shares shareDirs) {
	dir := t.TempDir()
	// vda stands for a system disk: blank, so a data volume set up on the
	// wrong disk would format it.
	system := sparseFile(t, filepath.Join(dir, "system.img"), 64<<20)
	data := sparseFile(t, filepath.Join(dir, "data.img"), 2<<30)
	marker := "/var/lib/docker/e2e-reboot.marker"
	token := fmt.Sprintf("token-%d", time.Now().UnixNano())
	opts := bootOptions{initrd: im.runtimeInitrd, drives: []string{system, data}, docker: true, shares: shares.shares()}
	var snapshotID string // the sandbox's checkpoint, kept on the volume

	formatted := t.Run("blank disk", func(t *testing.T) {
		testenv.RequireBinary(t, "docker")
		g := boot(t, im, opts)
		t.Logf("boot to first answered request: %v", g.waitReady(t, 3*time.Minute))
		res, took := g.ensure(t)
		t.Logf("ensure on a blank disk took %v: %s: %s", took, res.Status, res.Message)
		if res.Status != api.RuntimeEnsureResponseStatus("started") || !res.Ready {
			g.logDaemons(t)
			t.Fatalf("ensure answered %s, want started and ready", res.Status)
		}
		// The agent formatted the volume at startup, for the sandboxes'
		// state; ensure found it ready.
		if note := g.stateVolumeNote(t); !strings.Contains(note, "formatted "+dataDevice+" as btrfs") ||
			!strings.Contains(note, "mounted @arcbox at /var/lib/arcbox") {
			t.Errorf("the agent's startup did not format %s and mount @arcbox at the state dir: %s", dataDevice, note)
		}
		if want := fmt.Sprintf("tcp://0.0.0.0:%d", guestDockerPort); res.Endpoint != want {
			t.Errorf("endpoint %q, want %q", res.Endpoint, want)
		}
		t.Logf("runtime phase durations (s): %v", g.phases(t, "prerequisites", "data_volume", "containerd_ready", "dockerd_ready", "ensure"))
		g.checkRuntimeFromShare(t, shares)
		if again, _ := g.ensure(t); again.Status != api.RuntimeEnsureResponseStatus("reused") || !again.Ready {
			t.Errorf("a second ensure answered %s (ready %v), want reused", again.Status, again.Ready)
		}

		st := g.runtimeStatus(t)
		if !st.ContainerdReady || !st.DockerReady {
			t.Errorf("runtime status after ensure: %+v", st)
		}
		vol := service(t, st, "data-volume")
		for _, want := range []string{"device " + dataDevice, "filesystem btrfs", "; mounted;", "@docker at /var/lib/docker", "@containerd at /var/lib/containerd"} {
			if !strings.Contains(vol.Detail, want) {
				t.Errorf("data-volume detail lacks %q: %s", want, vol.Detail)
			}
		}
		if vol.Status != "ready" {
			t.Errorf("data-volume is %s, want ready", vol.Status)
		}
		mounts := g.guestMounts(t)
		for _, want := range []string{
			dataDevice + " /run/arcbox/data btrfs ",
			dataDevice + " /var/lib/docker btrfs .*subvol=/@docker",
			dataDevice + " /var/lib/containerd btrfs .*subvol=/@containerd",
			dataDevice + " /var/lib/arcbox btrfs .*subvol=/@arcbox",
		} {
			if !anyMatch(mounts, want) {
				t.Errorf("the guest's mounts lack %q: %q", want, mounts)
			}
		}

		// The proxy on TCP wants the token.
		if out, err := g.dockerWith(t, map[string]any{}, "version"); err == nil || !strings.Contains(out, "no Authorization header") {
			t.Errorf("docker version without the token: %v, %q; want the proxy's 401", err, out)
		}

		// Debian's dockerd answers through the agent's proxy.
		if v, want := g.docker(t, "version", "--format", "{{.Server.Version}}"), hostDockerdVersion(t); v != want {
			t.Errorf("docker version through the proxy: server %q, want %q", v, want)
		}
		if info := g.docker(t, "info", "--format", "{{.Driver}} {{.DockerRootDir}}"); info != "btrfs /var/lib/docker" {
			t.Errorf("docker info: %q, want the btrfs driver on /var/lib/docker", info)
		}

		var dockerdLog strings.Builder
		for line, err := range g.sdk.RuntimeLogs(context.Background(), "dockerd", client.LogsOptions{Tail: 5}) {
			if err != nil {
				t.Errorf("dockerd's log: %v", err)
				break
			}
			dockerdLog.WriteString(line + "\n")
		}
		if !strings.Contains(dockerdLog.String(), "level=") {
			t.Errorf("dockerd's log has no level=: %q", dockerdLog.String())
		}

		snapshotID = g.checkSandbox(t)
		g.checkDockerRun(t, shares)

		g.send(t, "write "+marker+" "+token)
		g.expect(t, `^E2E-WROTE: `+regexp.QuoteMeta(marker), 30*time.Second)
		g.powerOff(t)
		g.checkDaemonsStopped(t)
		g.checkUnmounted(t)
		checkBtrfs(t, data)
	})

	t.Run("reboot", func(t *testing.T) {
		testenv.RequireBinary(t, "docker")
		if !formatted {
			t.Fatal("needs the volume the blank-disk boot made")
		}
		g := boot(t, im, opts)
		g.waitReady(t, 3*time.Minute)
		res, took := g.ensure(t)
		t.Logf("ensure on the volume made before took %v: %s: %s", took, res.Status, res.Message)
		if res.Status != api.RuntimeEnsureResponseStatus("started") || !res.Ready {
			g.logDaemons(t)
			t.Fatalf("ensure answered %s, want started and ready", res.Status)
		}
		if note := g.stateVolumeNote(t); strings.Contains(note, "formatted") || !strings.Contains(note, "mounted "+dataDevice+" at /run/arcbox/data") {
			t.Errorf("the agent's startup should have mounted the volume, and not formatted it: %s", note)
		}
		if info := g.docker(t, "info", "--format", "{{.Driver}} {{.DockerRootDir}}"); info != "btrfs /var/lib/docker" {
			t.Errorf("docker info after a reboot: %q, want the btrfs driver on /var/lib/docker", info)
		}
		g.send(t, "check "+marker)
		line := g.expect(t, `^E2E-(FOUND|MISSING): `+regexp.QuoteMeta(marker), 30*time.Second)
		if want := "E2E-FOUND: " + marker + " " + token; line != want {
			t.Errorf("after a reboot the guest says %q, want %q", line, want)
		}
		// The sandboxes' state is on the volume: the checkpoint is still
		// there.
		if snapshotID != "" {
			r, err := g.client.ListSnapshotsWithResponse(context.Background(), &api.ListSnapshotsParams{})
			if err != nil || r.JSON200 == nil {
				t.Fatalf("list snapshots: %v %v", err, r)
			}
			if !slices.ContainsFunc(r.JSON200.Snapshots, func(s api.Snapshot) bool { return s.Id == snapshotID }) {
				t.Errorf("after a reboot the snapshots are %+v; the checkpoint %s made before is gone", r.JSON200.Snapshots, snapshotID)
			}
		}
		g.shutdown(t)
		g.checkDaemonsStopped(t)
		g.checkUnmounted(t)
		checkBtrfs(t, data)
	})

	t.Run("ext4 disk", func(t *testing.T) {
		mkfs := testenv.RequireBinary(t, "mkfs.ext4")
		debugfs := testenv.RequireBinary(t, "debugfs")
		e2fsck := testenv.RequireBinary(t, "e2fsck")
		tree := filepath.Join(t.TempDir(), "tree")
		if err := os.MkdirAll(tree, 0o755); err != nil {
			t.Fatal(err)
		}
		content := "ext4 marker " + token
		if err := os.WriteFile(filepath.Join(tree, "marker"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		ext4 := filepath.Join(t.TempDir(), "ext4.img")
		run(t, "", mkfs, "-q", "-F", "-d", tree, ext4, "64M")

		g := boot(t, im, bootOptions{initrd: im.runtimeInitrd, drives: []string{system, ext4}, shares: shares.shares()})
		g.waitReady(t, 3*time.Minute)
		res, took := g.ensure(t)
		t.Logf("ensure on an ext4 disk took %v: %s: %s", took, res.Status, res.Message)
		if res.Status != api.RuntimeEnsureResponseStatus("failed") || res.Ready {
			t.Errorf("ensure answered %s (ready %v), want failed", res.Status, res.Ready)
		}
		for _, want := range []string{"ext4", "--wipe-data-device", "ARCBOX_WIPE_DATA_DEVICE=true"} {
			if !strings.Contains(res.Message, want) {
				t.Errorf("ensure's message does not name %q: %s", want, res.Message)
			}
		}
		st := g.runtimeStatus(t)
		if vol := service(t, st, "data-volume"); vol.Status != "error" || !strings.Contains(vol.Detail, "ext4") {
			t.Errorf("data-volume service: %+v, want error naming ext4", vol)
		}
		if st.ContainerdReady || st.DockerReady {
			t.Errorf("the daemons started on a refused volume: %+v", st)
		}
		// The sandboxes' state would have been on the volume: they are
		// unavailable, and say why.
		c, err := g.client.CreateSandboxWithResponse(context.Background(), api.CreateSandboxRequest{Id: agenttest.Ptr("vm-refused")})
		if err != nil || c.StatusCode() != http.StatusServiceUnavailable || !strings.Contains(string(c.Body), "ext4") {
			t.Errorf("create a sandbox on a refused volume: %v %v %s; want 503 naming ext4", err, c.StatusCode(), c.Body)
		}
		for _, m := range g.guestMounts(t) {
			if strings.HasPrefix(m, "/dev/") {
				t.Errorf("the guest mounted %q", m)
			}
		}
		g.shutdown(t)

		if got := run(t, "", debugfs, "-R", "cat /marker", ext4); !strings.Contains(got, content) {
			t.Errorf("the ext4 disk's marker after the VM: %q, want %q", got, content)
		}
		run(t, "", e2fsck, "-f", "-n", ext4)
	})

	checkZero(t, system)
}

// stateVolumeNote is what the agent did at startup to put the sandboxes'
// state on the data volume, as its console log says.
func (g *guest) stateVolumeNote(t *testing.T) string {
	t.Helper()
	line := g.expect(t, `"msg":"the state dir is on the data volume"`, 10*time.Second)
	var rec struct{ Note string }
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("the agent's log line %q: %v", line, err)
	}
	return rec.Note
}

// checkRuntimeFromShare checks that the daemons the agent started, and
// the sandboxes' runc, are the arcbox share's (the image has none), and
// that dockerd's log, written in the guest on the share, is on the host,
// with dockerd's startup in it.
func (g *guest) checkRuntimeFromShare(t *testing.T, shares shareDirs) {
	t.Helper()
	bin := arcboxMount + "/" + runtimeBinDir
	for _, svc := range []string{"containerd", "dockerd"} {
		if _, ok := g.console.wait(regexp.MustCompile(`"msg":"spawned daemon".*"service":"`+svc+`".*"path":"`+regexp.QuoteMeta(bin+"/"+svc)+`"`), 0); !ok {
			t.Errorf("the console does not show %s spawned from %s", svc, bin)
		}
	}
	if _, ok := g.console.wait(regexp.MustCompile(`"msg":"sandbox backend ready".*"runtime":"`+regexp.QuoteMeta(bin+"/runc")+`"`), 0); !ok {
		t.Errorf("the console does not show the sandboxes' runc from %s", bin)
	}
	path := filepath.Join(shares.arcbox, "log", "dockerd.log")
	var data []byte
	// dockerd said it listens before ensure answered, and FUSE writes
	// through: the line is there, or comes at once.
	if !agenttest.WaitFor(30*time.Second, func() bool {
		data, _ = os.ReadFile(path)
		return bytes.Contains(data, []byte("API listen on"))
	}) {
		t.Errorf("dockerd's log on the host (%s) lacks its startup lines; it has %d bytes:\n%s", path, len(data), tail(data, 2048))
	}
}

// tail is the last n bytes of b at most.
func tail(b []byte, n int) []byte { return b[max(0, len(b)-n):] }

// checkUnmounted checks that the console shows the agent unmounting, at
// power-off, the data volume (its subvolumes, the state dir's among them,
// and its top level) and then the shares it mounted, with no warning.
func (g *guest) checkUnmounted(t *testing.T) {
	t.Helper()
	for _, dir := range []string{"/var/lib/docker", "/var/lib/containerd", "/var/lib/arcbox", "/run/arcbox/data"} {
		if _, ok := g.console.wait(regexp.MustCompile(`"msg":"data volume unmounted".*"paths":\[[^\]]*"`+regexp.QuoteMeta(dir)+`"`), 0); !ok {
			t.Errorf("the console does not show %s unmounted at power-off", dir)
		}
	}
	for _, dir := range []string{arcboxMount, usersMount} {
		if _, ok := g.console.wait(regexp.MustCompile(`"msg":"VirtioFS share unmounted".*"path":"`+regexp.QuoteMeta(dir)+`"`), 0); !ok {
			t.Errorf("the console does not show the share at %s unmounted at power-off", dir)
		}
	}
	if line, ok := g.console.wait(regexp.MustCompile(`"msg":"unmount the (data volume|shares)"`), 0); ok {
		t.Errorf("an unmount failed at power-off: %s", line)
	}
}

// checkBtrfs runs btrfs check on the data volume's image, now the VM is
// off: a clean power-off leaves nothing to repair.
func checkBtrfs(t *testing.T, image string) {
	t.Helper()
	out := run(t, "", testenv.RequireBinary(t, "btrfs"), "check", "--readonly", image)
	line, ok := regexp.MustCompile(`(?m)^found .*`).FindString(out), strings.Contains(out, "no error found")
	if !ok {
		t.Errorf("btrfs check --readonly %s:\n%s", image, out)
	}
	t.Logf("btrfs check --readonly: %s", line)
}

// anyMatch reports whether any of lines matches the pattern.
func anyMatch(lines []string, pattern string) bool {
	re := regexp.MustCompile(pattern)
	for _, l := range lines {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}
