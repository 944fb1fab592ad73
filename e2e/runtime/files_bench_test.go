package runtime

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/sandbox/oci"
)

const (
	// bigSize is the file both paths copy.
	bigSize = 1 << 30
	// cpVolumeSize is the data volume of this benchmark: the suite's
	// imageSize cannot hold a container with a 1 GiB file in it. The
	// image file is sparse.
	cpVolumeSize = 4 << 30
	// bigPath is where the file goes in the sandbox and in the container.
	bigPath = "/big"
)

// BenchmarkFilesVsDockerCp copies the same 1 GiB file (pseudo-random, so
// that nothing on the way can compress it) into a sandbox and back out
// through the files API, with the Go SDK over the agent's unix socket,
// and into a running container of the test image and back out with
// docker cp through the agent's Docker API proxy, side by side in one
// run. Each figure is the bytes of the file over the copy's wall time,
// the client's process included (the SDK's is this one; docker cp's is
// the CLI's). The copies out are read and counted, not written to a
// file. direct-up is the upload's floor on the disk the sandbox is on:
// the benchmark writes the file into the sandbox's root itself. A first round, untimed, checks that each path gives back the
// file it was given (its size and SHA-256) and leaves the file in place,
// so that every timed copy in replaces one.
func BenchmarkFilesVsDockerCp(b *testing.B) {
	e := setup(b)
	a := e.agent
	if err := os.Truncate(a.image, cpVolumeSize); err != nil {
		b.Fatal(err)
	}
	e.allowSandboxes(b)
	src, sum := randomFile(b, bigSize)

	a.start(b, "--sandbox-busybox", e.bins["busybox"])
	r := a.ensure(b, true)
	if r.Status != "started" || !r.Ready {
		b.Fatalf("ensure: %+v\n%s", r, a.logTail())
	}
	e.dockerHost = r.Endpoint
	// The SDK as a host app has it, without agenttest's checks against
	// openapi.yaml: only the copy is timed.
	sdk, err := client.New("unix://"+a.Socket(), client.WithHTTPClient(&http.Client{Transport: a.Transport()}))
	if err != nil {
		b.Fatal(err)
	}
	const id, ctr = "files-bench", "e2e-cp"
	createSandbox(b, sdk, id)
	e.docker(b, nil, "run", "-d", "--name", ctr, e.ref, "sleep", "86400")

	upload := func() {
		f, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if _, _, err := sdk.WriteFile(context.Background(), id, bigPath, f, client.WriteFileOptions{}); err != nil {
			b.Fatalf("upload: %v\n%s", err, a.logTail())
		}
	}
	download := func(w io.Writer) {
		f, err := sdk.ReadFile(context.Background(), id, bigPath, client.ReadFileOptions{})
		if err != nil {
			b.Fatalf("download: %v\n%s", err, a.logTail())
		}
		defer f.Close()
		if n, err := io.Copy(w, f); err != nil || n != bigSize {
			b.Fatalf("download: %d bytes (%v), want %d", n, err, bigSize)
		}
	}
	// The floor of an upload on this disk: the same bytes copied by this
	// process into the sandbox's root on the host, a temporary file
	// renamed over the file as an upload does, with no HTTP and no agent.
	rootfs := filepath.Join(a.Path("state"), "sandboxes", id, "rootfs")
	direct := func() {
		in, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		defer in.Close()
		tmp := filepath.Join(rootfs, ".bench-direct")
		out, err := os.Create(tmp)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(struct{ io.Writer }{out}, in, make([]byte, 1<<20)); err != nil {
			b.Fatal(err)
		}
		if err := out.Close(); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(rootfs, bigPath)); err != nil {
			b.Fatal(err)
		}
	}
	cpIn := func() { e.docker(b, nil, "cp", src, ctr+":"+bigPath) }
	cpOut := func(w io.Writer) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := e.dockerCmd(ctx, "cp", ctr+":"+bigPath, "-")
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = w, &stderr
		if err := cmd.Run(); err != nil {
			b.Fatalf("docker cp %s:%s -: %v\n%s", ctr, bigPath, err, stderr.String())
		}
	}

	// The check: the file comes back whole from each path.
	upload()
	h := sha256.New()
	download(h)
	if got := [sha256.Size]byte(h.Sum(nil)); got != sum {
		b.Fatalf("the files API gave back a file whose SHA-256 differs from the one uploaded")
	}
	cpIn()
	pr, pw := io.Pipe()
	checked := make(chan error, 1)
	go func() {
		err := checkTar(pr, filepath.Base(bigPath), sum)
		_ = pr.CloseWithError(err)
		checked <- err
	}()
	cpOut(pw)
	pw.Close()
	if err := <-checked; err != nil {
		b.Fatalf("docker cp out: %v", err)
	}

	var up, floor, down, in, out time.Duration
	timed := func(d *time.Duration, f func()) {
		began := time.Now()
		f()
		*d += time.Since(began)
	}
	for b.Loop() {
		timed(&floor, direct)
		timed(&up, upload)
		timed(&down, func() { download(io.Discard) })
		timed(&in, cpIn)
		var tarBytes countingWriter
		timed(&out, func() { cpOut(&tarBytes) })
		if tarBytes < bigSize {
			b.Fatalf("docker cp out: a %d-byte tar for a %d-byte file", tarBytes, bigSize)
		}
	}
	mbps := func(d time.Duration) float64 { return float64(bigSize) * float64(b.N) / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(up), "agent-up-MB/s")
	b.ReportMetric(mbps(floor), "direct-up-MB/s")
	b.ReportMetric(mbps(down), "agent-down-MB/s")
	b.ReportMetric(mbps(in), "docker-cp-in-MB/s")
	b.ReportMetric(mbps(out), "docker-cp-out-MB/s")

	b.StopTimer()
	if _, err := client.Check(sdk.API().RemoveSandboxWithResponse(context.Background(), id, &api.RemoveSandboxParams{Force: new(true)})); err != nil {
		b.Errorf("remove sandbox %s: %v", id, err)
	}
	e.docker(b, nil, "rm", "-f", ctr)
	if _, err := a.terminate(b, 2*time.Minute); err != nil {
		b.Errorf("the agent's exit after SIGTERM: %v", err)
	}
	removeSandboxCgroups(b, a.Path("state"))
}

// randomFile writes size pseudo-random bytes to a file of the test's and
// returns its path and SHA-256.
func randomFile(b *testing.B, size int64) (string, [sha256.Size]byte) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "big")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	if _, err := io.CopyN(w, rand.NewChaCha8([32]byte{'a', 'r', 'c'}), size); err != nil {
		b.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path, [sha256.Size]byte(h.Sum(nil))
}

// createSandbox creates sandbox id from the agent's default root
// filesystem and waits for its ready event.
func createSandbox(b testing.TB, sdk *client.Client, id string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := client.Check(sdk.API().CreateSandboxWithResponse(ctx, api.CreateSandboxRequest{Id: new(id)})); err != nil {
		b.Fatalf("create sandbox %s: %v", id, err)
	}
	// From the first event the agent keeps: the ready event may come
	// before the subscription.
	for ev, err := range sdk.Events(ctx, client.EventsOptions{ID: id, After: new(int64(0))}) {
		if err != nil {
			b.Fatalf("events of %s: %v", id, err)
		}
		switch ev.Action {
		case api.EventActionReady:
			return
		case api.EventActionFailed:
			b.Fatalf("sandbox %s failed: %v", id, ev.Attributes)
		}
	}
}

// checkTar reads a tar stream that must hold one regular file, name, of
// bigSize bytes whose SHA-256 is sum, and nothing else.
func checkTar(r io.Reader, name string, sum [sha256.Size]byte) error {
	tr := tar.NewReader(r)
	hdr, err := tr.Next()
	if err != nil {
		return fmt.Errorf("the tar's first header: %w", err)
	}
	if hdr.Name != name || hdr.Typeflag != tar.TypeReg || hdr.Size != bigSize {
		return fmt.Errorf("the tar holds %q (type %c, %d bytes), want the regular file %q of %d bytes", hdr.Name, hdr.Typeflag, hdr.Size, name, bigSize)
	}
	h := sha256.New()
	if _, err := io.Copy(h, tr); err != nil {
		return fmt.Errorf("the tar's file: %w", err)
	}
	if [sha256.Size]byte(h.Sum(nil)) != sum {
		return errors.New("the file in the tar has a SHA-256 other than the one copied in")
	}
	if hdr, err := tr.Next(); err != io.EOF {
		return fmt.Errorf("the tar goes on after the file: %v %v", hdr, err)
	}
	_, err = io.Copy(io.Discard, r) // the padding after the end
	return err
}

// countingWriter counts what is written to it.
type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

// removeSandboxCgroups removes the parent cgroup of the sandboxes of the
// agent with stateDir (oci.DefaultCgroupParent), which the agent leaves
// when it exits: at the root of each hierarchy and under this process's
// own cgroups, where the OCI runtime makes the relative paths it is
// given. One that is not empty (a sandbox's cgroup left) fails b.
func removeSandboxCgroups(b *testing.B, stateDir string) {
	b.Helper()
	name := oci.DefaultCgroupParent(stateDir)
	bases := []string{"/"}
	if data, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if parts := strings.SplitN(line, ":", 3); len(parts) == 3 {
				bases = append(bases, parts[2])
			}
		}
	}
	var removed []string
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range append(hierarchies, "/sys/fs/cgroup") {
		for _, base := range bases {
			d := filepath.Join(h, base, name)
			if st, err := os.Stat(d); err != nil || !st.IsDir() {
				continue
			}
			if err := os.Remove(d); err != nil {
				b.Errorf("the sandboxes' parent cgroup %s is left: %v", d, err)
				continue
			}
			removed = append(removed, d)
		}
	}
	b.Logf("removed the sandboxes' parent cgroups %v", removed)
}
