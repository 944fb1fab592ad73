package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
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
		r, err := g.client.GetRuntimeLogsWithResponse(context.Background(), &api.GetRuntimeLogsParams{Service: svc, Tail: &tail})
		if err != nil {
			t.Logf("%s log: %v", svc, err)
			continue
		}
		t.Logf("%s log (%d):\n%s", svc, r.StatusCode(), r.Body)
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
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

// testDataVolume boots the runtime image with a blank data disk, starts
// the runtime through the agent, and boots again on the same disk; then
// with an ext4 disk, which must be refused and left intact.
func testDataVolume(t *testing.T, im vmImage) {
	dir := t.TempDir()
	// vda stands for a system disk: blank, so a data volume set up on the
	// wrong disk would format it.
	system := sparseFile(t, filepath.Join(dir, "system.img"), 64<<20)
	data := sparseFile(t, filepath.Join(dir, "data.img"), 2<<30)
	marker := "/var/lib/docker/e2e-reboot.marker"
	token := fmt.Sprintf("token-%d", time.Now().UnixNano())
	opts := bootOptions{initrd: im.runtimeInitrd, drives: []string{system, data}, docker: true}

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
		if !strings.Contains(res.Message, "formatted "+dataDevice+" as btrfs") {
			t.Errorf("ensure's message does not say it formatted %s: %s", dataDevice, res.Message)
		}
		if want := fmt.Sprintf("tcp://0.0.0.0:%d", guestDockerPort); res.Endpoint != want {
			t.Errorf("endpoint %q, want %q", res.Endpoint, want)
		}
		t.Logf("runtime phase durations (s): %v", g.phases(t, "prerequisites", "data_volume", "containerd_ready", "dockerd_ready", "ensure"))
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

		tail := 5
		if r, err := g.client.GetRuntimeLogsWithResponse(context.Background(), &api.GetRuntimeLogsParams{Service: "dockerd", Tail: &tail}); err != nil ||
			r.StatusCode() != 200 || !strings.Contains(string(r.Body), "level=") {
			t.Errorf("dockerd's log: %v %v", err, r)
		}

		g.checkSandbox(t)
		g.checkDockerRun(t)

		g.send(t, "write "+marker+" "+token)
		g.expect(t, `^E2E-WROTE: `+regexp.QuoteMeta(marker), 30*time.Second)
		g.shutdown(t)
		g.checkDaemonsStopped(t)
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
		if strings.Contains(res.Message, "formatted") || !strings.Contains(res.Message, "mounted "+dataDevice+" at /run/arcbox/data") {
			t.Errorf("ensure's message should say it mounted the volume, and not that it formatted it: %s", res.Message)
		}
		if info := g.docker(t, "info", "--format", "{{.Driver}} {{.DockerRootDir}}"); info != "btrfs /var/lib/docker" {
			t.Errorf("docker info after a reboot: %q, want the btrfs driver on /var/lib/docker", info)
		}
		g.send(t, "check "+marker)
		line := g.expect(t, `^E2E-(FOUND|MISSING): `+regexp.QuoteMeta(marker), 30*time.Second)
		if want := "E2E-FOUND: " + marker + " " + token; line != want {
			t.Errorf("after a reboot the guest says %q, want %q", line, want)
		}
		g.shutdown(t)
		g.checkDaemonsStopped(t)
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

		g := boot(t, im, bootOptions{initrd: im.runtimeInitrd, drives: []string{system, ext4}})
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
		if mounts := g.guestMounts(t); len(mounts) != 0 {
			t.Errorf("the guest mounted %q", mounts)
		}
		g.shutdown(t)

		if got := run(t, "", debugfs, "-R", "cat /marker", ext4); !strings.Contains(got, content) {
			t.Errorf("the ext4 disk's marker after the VM: %q, want %q", got, content)
		}
		run(t, "", e2fsck, "-f", "-n", ext4)
	})

	checkZero(t, system)
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
