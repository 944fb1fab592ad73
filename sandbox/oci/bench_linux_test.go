package oci

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// The benchmarks measure the sandbox path against the bare runtime in the
// same run (go test -run '^$' -bench . ./sandbox/): creating to ready
// against `runc run -d` of an equivalent bundle, a `true` run against
// `runc exec`, output throughput against a bare exec into a pipe, each on
// runc and crun (which picks the default runtime).

// BenchmarkCreateToReady: Create until the ready event, against a bare
// `<runtime> run -d` of a bundle made once with the same config.json.
func BenchmarkCreateToReady(b *testing.B) {
	for _, rt := range runtimes {
		for _, mode := range []struct {
			name string
			sec  sandbox.Security
		}{{"userns", sandbox.Security{}}, {"host-users", sandbox.Security{HostUsers: true}}} {
			b.Run("sandbox/"+rt+"/"+mode.name, func(b *testing.B) {
				e := newOCIEnv(b, rt)
				e.timeEach(b, "bench", func(id string) {
					if _, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: id, Security: mode.sec}); err != nil {
						b.Fatal(err)
					}
					e.expect(id, sandbox.ActionReady)
				})
			})
		}
		for _, mode := range []struct {
			name  string
			idmap sandbox.IDMap
		}{{"userns", sandbox.IDMap{HostID: idPoolStart, Size: sandbox.IDRangeSize}}, {"host-users", sandbox.IDMap{}}} {
			b.Run("bare/"+rt+"/"+mode.name, func(b *testing.B) {
				bb := newBareBundle(b, rt, mode.idmap)
				b.ResetTimer()
				for i := range b.N {
					id := fmt.Sprintf("bare%d", i)
					bb.run(id)
					b.StopTimer()
					bb.remove(id)
					b.StartTimer()
				}
			})
		}
	}
}

// BenchmarkCreateToReadyPaired: BenchmarkCreateToReady's two sides taken
// in turn in each iteration, so that both see the same load on a busy
// machine: sandbox-ms and bare-ms are their means, x-bare the ratio.
func BenchmarkCreateToReadyPaired(b *testing.B) {
	for _, rt := range runtimes {
		for _, mode := range []struct {
			name  string
			sec   sandbox.Security
			idmap sandbox.IDMap
		}{
			{"userns", sandbox.Security{}, sandbox.IDMap{HostID: idPoolStart, Size: sandbox.IDRangeSize}},
			{"host-users", sandbox.Security{HostUsers: true}, sandbox.IDMap{}},
		} {
			b.Run(rt+"/"+mode.name, func(b *testing.B) {
				e := newOCIEnv(b, rt)
				bb := newBareBundle(b, rt, mode.idmap)
				var box, bare time.Duration
				b.ResetTimer()
				for i := range b.N {
					id := fmt.Sprintf("pair%d", i)
					e.track(id)
					t0 := time.Now()
					if _, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: id, Security: mode.sec}); err != nil {
						b.Fatal(err)
					}
					e.expect(id, sandbox.ActionReady)
					box += time.Since(t0)
					t0 = time.Now()
					bb.run(id)
					bare += time.Since(t0)
					b.StopTimer()
					if err := e.m.Remove(context.Background(), id, true); err != nil {
						b.Fatal(err)
					}
					bb.remove(id)
					b.StartTimer()
				}
				b.ReportMetric(float64(box.Microseconds())/1000/float64(b.N), "sandbox-ms")
				b.ReportMetric(float64(bare.Microseconds())/1000/float64(b.N), "bare-ms")
				b.ReportMetric(float64(box)/float64(bare), "x-bare")
			})
		}
	}
}

// BenchmarkRemove: removing a ready sandbox (its init ended, the container
// deleted, its root unmounted, its files gone), against a bare
// `<runtime> kill` and `delete -f` of a container run from the same bundle.
func BenchmarkRemove(b *testing.B) {
	for _, rt := range runtimes {
		b.Run("sandbox/"+rt, func(b *testing.B) {
			e := newOCIEnv(b, rt)
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				id := e.create(sandbox.Spec{ID: fmt.Sprintf("rm%d", i)}).ID
				b.StartTimer()
				if err := e.m.Remove(context.Background(), id, true); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("bare/"+rt, func(b *testing.B) {
			bb := newBareBundle(b, rt)
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("bare%d", i)
				b.StopTimer()
				bb.run(id)
				b.StartTimer()
				bb.remove(id)
			}
		})
	}
}

// BenchmarkRunTrue: a `true` run's round trip, against a bare
// `<runtime> exec <id> true` into the same sandbox.
func BenchmarkRunTrue(b *testing.B) {
	for _, rt := range runtimes {
		b.Run("sandbox/"+rt, func(b *testing.B) {
			e := newOCIEnv(b, rt)
			id := e.create(sandbox.Spec{ID: "exec"}).ID
			b.ResetTimer()
			for range b.N {
				code, err := e.m.Run(context.Background(), id, sandbox.Process{Cmd: []string{"true"}}, func(sandbox.Output) error { return nil })
				if err != nil || code != 0 {
					b.Fatalf("Run true = %d, %v", code, err)
				}
			}
		})
		b.Run("bare/"+rt, func(b *testing.B) {
			e := newOCIEnv(b, rt)
			id := e.create(sandbox.Spec{ID: "exec"}).ID
			root := filepath.Join(e.cfg.StateDir, "runtime")
			b.ResetTimer()
			for range b.N {
				if out, err := exec.Command(e.runtime, "--root", root, "exec", id, "true").CombinedOutput(); err != nil {
					b.Fatalf("%s exec: %v: %s", rt, err, out)
				}
			}
		})
	}
}

// BenchmarkRunOutput: 1 GiB of output through Run's out callback (MB/s is
// the throughput), against a bare exec writing into a pipe the benchmark
// drains. The writers: busybox `head -c 1G /dev/zero` (4 KiB writes, and
// slow itself: about 330 MB/s into `cat` on the host), and `dd` with 64
// KiB and 1 MiB blocks, which show what the path itself carries.
func BenchmarkRunOutput(b *testing.B) {
	const size = 1 << 30
	writers := []struct {
		name string
		cmd  []string
	}{
		{"head", []string{"head", "-c", "1073741824", "/dev/zero"}},
		{"gnuhead", []string{gnuHead, "-c", "1073741824", "/dev/zero"}},
		{"dd64k", []string{"dd", "if=/dev/zero", "bs=65536", "count=16384", "status=none"}},
		{"dd1m", []string{"dd", "if=/dev/zero", "bs=1048576", "count=1024", "status=none"}},
	}
	for _, w := range writers {
		for _, rt := range runtimes {
			b.Run(w.name+"/sandbox/"+rt, func(b *testing.B) {
				e := newOCIEnv(b, rt)
				id := e.create(sandbox.Spec{ID: "out", Limits: sandbox.Limits{VCPUs: 2}, Rootfs: gnuHeadRootfs(b, e.rootfsDir("gnuhead"))}).ID
				b.SetBytes(size)
				b.ResetTimer()
				for range b.N {
					var n int64
					code, err := e.m.Run(context.Background(), id, sandbox.Process{Cmd: w.cmd},
						func(o sandbox.Output) error { n += int64(len(o.Data)); return nil })
					if err != nil || code != 0 || n != size {
						b.Fatalf("Run = %d, %v, %d bytes", code, err, n)
					}
				}
			})
			// As a handler does: each chunk written to a socket, which
			// the client (here a goroutine) drains; a write per chunk,
			// so small chunks cost what they cost there.
			b.Run(w.name+"/sandbox-socket/"+rt, func(b *testing.B) {
				e := newOCIEnv(b, rt)
				id := e.create(sandbox.Spec{ID: "out", Limits: sandbox.Limits{VCPUs: 2}, Rootfs: gnuHeadRootfs(b, e.rootfsDir("gnuhead"))}).ID
				b.SetBytes(size)
				b.ResetTimer()
				var chunks int
				defer func() { b.ReportMetric(float64(size)*float64(b.N)/float64(chunks), "B/chunk") }()
				for range b.N {
					agent, client := socketPair(b)
					drained := make(chan int64, 1)
					go func() {
						n, _ := io.CopyBuffer(io.Discard, client, make([]byte, 256<<10))
						drained <- n
					}()
					code, err := e.m.Run(context.Background(), id, sandbox.Process{Cmd: w.cmd},
						func(o sandbox.Output) error { chunks++; _, err := agent.Write(o.Data); return err })
					agent.Close()
					n := <-drained
					client.Close()
					if err != nil || code != 0 || n != size {
						b.Fatalf("Run = %d, %v, %d bytes", code, err, n)
					}
				}
			})
			b.Run(w.name+"/bare/"+rt, func(b *testing.B) {
				e := newOCIEnv(b, rt)
				id := e.create(sandbox.Spec{ID: "out", Limits: sandbox.Limits{VCPUs: 2}, Rootfs: gnuHeadRootfs(b, e.rootfsDir("gnuhead"))}).ID
				root := filepath.Join(e.cfg.StateDir, "runtime")
				b.SetBytes(size)
				b.ResetTimer()
				for range b.N {
					cmd := exec.Command(e.runtime, append([]string{"--root", root, "exec", id}, w.cmd...)...)
					out, err := cmd.StdoutPipe()
					if err != nil {
						b.Fatal(err)
					}
					if err := cmd.Start(); err != nil {
						b.Fatal(err)
					}
					n, _ := io.CopyBuffer(io.Discard, out, make([]byte, 256<<10))
					if err := cmd.Wait(); err != nil || n != size {
						b.Fatalf("bare exec: %v, %d bytes", err, n)
					}
				}
			})
		}
	}
}

// socketPair is a connected pair of unix stream sockets, in Go's poller.
func socketPair(b testing.TB) (agent, client *os.File) {
	b.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "agent"), os.NewFile(uintptr(fds[1]), "client")
}

// gnuHead is where gnuHeadRootfs puts GNU head: busybox's head writes 4
// KiB at a time and tops out near 190 MB/s into a pipe here, so it
// measures itself more than the path; GNU head does over 1 GB/s.
const gnuHead = "/opt/gnu/head"

// gnuHeadRootfs is a busybox root filesystem with the host's GNU head and
// the libraries it loads.
func gnuHeadRootfs(b testing.TB, root string) string {
	b.Helper()
	if err := EnsureBusyboxRootfs(root, testenv.RequireBinary(b, "busybox")); err != nil {
		b.Fatal(err)
	}
	head := testenv.RequireBinary(b, "head")
	out, err := exec.Command("ldd", head).Output()
	if err != nil {
		b.Fatalf("ldd %s: %v", head, err)
	}
	copies := map[string]string{gnuHead: head}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			copies[f] = f
		}
	}
	for dst, src := range copies {
		data, err := os.ReadFile(src)
		if err != nil {
			b.Fatal(err)
		}
		p := filepath.Join(root, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		os.Remove(p)
		if err := os.WriteFile(p, data, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	return root
}

// bareBundle is a bundle like a sandbox's (the same config.json, an
// overlay root), made once, for the bare runtime to run.
type bareBundle struct {
	b       testing.TB
	runtime string
	root    string // the runtime's --root
	dir     string
}

func newBareBundle(b testing.TB, rt string, idmap ...sandbox.IDMap) *bareBundle {
	b.Helper()
	path := requirePrivileged(b, rt)
	var m sandbox.IDMap
	if len(idmap) > 0 {
		m = idmap[0]
	}
	dir := searchableTempDir(b)
	bb := &bareBundle{b: b, runtime: path, root: filepath.Join(dir, "runtime"), dir: filepath.Join(dir, "bundle")}
	rootfs := filepath.Join(bb.dir, "rootfs")
	for _, d := range []string{bb.root, rootfs, filepath.Join(bb.dir, "upper"), filepath.Join(bb.dir, "work")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			b.Fatal(err)
		}
	}
	if err := copyOwnerMode(testRootfs, filepath.Join(bb.dir, "upper"), m.HostID); err != nil {
		b.Fatal(err)
	}
	// The same layers a sandbox of the agent gets: with a user
	// namespace, the lower seen through an idmapped mount.
	lower := testRootfs
	if m.Size > 0 {
		if err := os.Chmod(bb.dir, 0o711); err != nil {
			b.Fatal(err)
		}
		lower = filepath.Join(bb.dir, lowerDir)
		if err := os.Mkdir(lower, 0o700); err != nil {
			b.Fatal(err)
		}
		ns, err := usernsFile(m)
		if err != nil {
			b.Fatal(err)
		}
		err = mountIDMapped(testRootfs, lower, ns)
		ns.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	err := mountOverlay(lower, filepath.Join(bb.dir, "upper"), filepath.Join(bb.dir, "work"), rootfs)
	if m.Size > 0 {
		if uerr := unmount(lower); uerr != nil {
			b.Fatal(uerr)
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := unmount(rootfs); err != nil {
			b.Error(err)
		}
		// A failed run can leave the runtime's cgroups behind.
		for _, d := range cgroupDirs(filepath.Join(testCgroupParent, "bare")) {
			os.Remove(d)
		}
	})
	spec, err := buildSpec(bundleParams{
		ID: "bare", InitPath: testInitPath, Limits: sandbox.DefaultLimits, IDMap: m,
		CgroupsPath: filepath.Join(testCgroupParent, "bare"), Cgroup2: isCgroup2("/sys/fs/cgroup"),
	})
	if err != nil {
		b.Fatal(err)
	}
	data, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bb.dir, "config.json"), data, 0o600); err != nil {
		b.Fatal(err)
	}
	return bb
}

// run is the measured part: `<runtime> run -d`.
func (bb *bareBundle) run(id string) {
	cmd := exec.Command(bb.runtime, "--root", bb.root, "run", "-d", "--bundle", bb.dir, id)
	// The init inherits these: files, so the command's Wait does not wait
	// for the init to close a pipe.
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		bb.b.Fatal(err)
	}
	defer devnull.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if err := cmd.Run(); err != nil {
		bb.b.Fatalf("%s run -d: %v", bb.runtime, err)
	}
}

func (bb *bareBundle) remove(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, bb.runtime, "--root", bb.root, "delete", "-f", id).CombinedOutput(); err != nil {
		bb.b.Fatalf("%s delete -f: %v: %s", bb.runtime, err, out)
	}
}
