package lifecycle

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// The test binary doubles as fake daemons and tools: the fake exec seam
// (fakeExec) runs it again with fakeRoleEnv set, and TestMain then plays
// that role instead of running tests.
const (
	fakeRoleEnv     = "LIFECYCLE_FAKE_ROLE"     // containerd, dockerd or tool
	fakeBehaviorEnv = "LIFECYCLE_FAKE_BEHAVIOR" // serve (default), exit, hang, ignore-term
	fakeRecordEnv   = "LIFECYCLE_FAKE_RECORD"   // a directory where fakes record what they saw
	fakeLogLines    = 25                        // lines a fake daemon logs at start
)

func TestMain(m *testing.M) {
	if role := os.Getenv(fakeRoleEnv); role != "" {
		os.Exit(fakeMain(role, os.Args[1:]))
	}
	os.Exit(testenv.RunIsolated(m))
}

// fakeMain plays a daemon or a tool. A fake daemon logs fakeLogLines lines,
// records its arguments and PATH, writes its --pidfile as dockerd does,
// then, as its behaviour says: serves its
// socket until SIGTERM (serve), exits 3 (exit), never listens (hang), or
// serves and ignores SIGTERM (ignore-term). On SIGTERM it records the fact
// in the events file, so tests can see the order of a shutdown. Fakes write
// their output to stderr; the runtime captures stdout and stderr together.
func fakeMain(role string, args []string) int {
	record := os.Getenv(fakeRecordEnv)
	behavior := os.Getenv(fakeBehaviorEnv)
	if role == "tool" {
		fmt.Fprintln(os.Stderr, "tool output")
		if behavior == "fail" {
			return 1
		}
		return 0
	}
	for i := range fakeLogLines {
		fmt.Fprintf(os.Stderr, "fake %s line %d\n", role, i)
	}
	if record != "" {
		line := strings.Join(args, "\x00") + "\n" + os.Getenv("PATH") + "\n"
		// A failure is logged; the test then finds nothing recorded.
		if err := os.WriteFile(filepath.Join(record, fmt.Sprintf("%s.%d.args", role, os.Getpid())), []byte(line), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "fake:", err)
		}
	}
	if behavior == "exit" {
		fmt.Fprintf(os.Stderr, "fake %s: giving up\n", role)
		return 3
	}
	for _, a := range args {
		// dockerd writes its pid file early, before it serves.
		if path, ok := strings.CutPrefix(a, "--pidfile="); ok {
			if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, "fake:", err)
			}
		}
	}
	sigs := make(chan os.Signal, 1)
	if behavior == "ignore-term" {
		signal.Ignore(unix.SIGTERM)
	} else {
		signal.Notify(sigs, unix.SIGTERM)
	}
	if behavior != "hang" {
		sock := ""
		for i, a := range args {
			if role == "containerd" && a == "--address" && i+1 < len(args) {
				sock = args[i+1]
			}
			if v, ok := strings.CutPrefix(a, "--host=unix://"); ok {
				sock = v
			}
			if a == "-H" && i+1 < len(args) {
				sock = strings.TrimPrefix(args[i+1], "unix://")
			}
		}
		os.Remove(sock)
		ln, err := net.Listen("unix", sock)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake:", err)
			return 2
		}
		defer ln.Close()
		if role == "dockerd" {
			go serveFakeDocker(ln)
		} else {
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}
		fmt.Fprintf(os.Stderr, "fake %s serving %s\n", role, sock)
	}
	<-sigs // forever when SIGTERM is ignored: SIGKILL ends it
	if record != "" {
		f, err := os.OpenFile(filepath.Join(record, "events"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%s terminated\n", role)
			f.Close()
		}
	}
	return 0
}

// fakes replaces what a Runtime starts with the test binary playing the
// part, and counts the starts.
type fakes struct {
	record string

	mu        sync.Mutex
	behaviors map[string]string // by role, or by tool name
	started   map[string][]int  // pids, by role
	commands  [][]string        // every command, as asked
}

func newFakes(t *testing.T) *fakes {
	return &fakes{record: t.TempDir(), behaviors: map[string]string{}, started: map[string][]int{}}
}

func (f *fakes) set(role, behavior string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.behaviors[role] = behavior
}

func (f *fakes) starts(role string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.started[role])
}

// exec is a Config.StartProcess.
func (f *fakes) exec(cmd *exec.Cmd) error {
	role := filepath.Base(cmd.Path)
	if role != Containerd && role != Dockerd {
		role = "tool"
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	f.mu.Lock()
	behavior := f.behaviors[role]
	if role == "tool" {
		behavior = f.behaviors[filepath.Base(cmd.Path)]
	}
	f.commands = append(f.commands, append([]string{cmd.Path}, cmd.Args[1:]...))
	f.mu.Unlock()
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	// Under -race a process sleeps a second at exit unless told not to.
	gorace := "atexit_sleep_ms=0"
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		if v, ok := strings.CutPrefix(kv, "GORACE="); ok {
			gorace = v + " " + gorace
			return true
		}
		return false
	})
	cmd.Env = append(env, "GORACE="+gorace, fakeRoleEnv+"="+role, fakeBehaviorEnv+"="+behavior, fakeRecordEnv+"="+f.record)
	cmd.Path = self
	if err := cmd.Start(); err != nil {
		return err
	}
	f.mu.Lock()
	f.started[role] = append(f.started[role], cmd.Process.Pid)
	f.mu.Unlock()
	return nil
}

// args returns what the fake daemon with pid was started with, and its PATH.
func (f *fakes) args(t *testing.T, role string, pid int) ([]string, string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.record, fmt.Sprintf("%s.%d.args", role, pid)))
	if err != nil {
		t.Fatalf("fake %s (pid %d) recorded nothing: %v", role, pid, err)
	}
	lines := strings.SplitN(string(b), "\n", 3)
	return strings.Split(lines[0], "\x00"), lines[1]
}

// recorded reports whether the fake daemon with pid has logged its lines
// and recorded its arguments.
func (f *fakes) recorded(role string, pid int) bool {
	_, err := os.Stat(filepath.Join(f.record, fmt.Sprintf("%s.%d.args", role, pid)))
	return err == nil
}

// pid returns the pid of the n-th fake of role started, once it is.
func (f *fakes) pid(role string, n int) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.started[role]) <= n {
		return 0, false
	}
	return f.started[role][n], true
}

func (f *fakes) events(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.record, "events"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(string(b), " terminated", ""))
}

// shortTempDir is a temporary directory whose paths fit a unix socket
// address (108 bytes), removed when the test ends.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ab")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// testConfig is a Config with every path under dir, and a bin dir holding
// the required binaries (empty files: the fakes run instead).
func testConfig(t testing.TB, dir string) Config {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range requiredBinaries {
		if err := os.WriteFile(filepath.Join(bin, name), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return Config{
		RuntimeBinDir:    bin,
		ContainerdSocket: filepath.Join(dir, "run/containerd/containerd.sock"),
		DockerSocket:     filepath.Join(dir, "run/docker.sock"),
		Endpoint:         "vsock:2375",
		ContainerdRoot:   filepath.Join(dir, "lib/containerd"),
		ContainerdState:  filepath.Join(dir, "run/containerd"),
		ContainerdConfig: filepath.Join(dir, "etc/containerd/config.toml"),
		DockerDataRoot:   filepath.Join(dir, "lib/docker"),
		DockerExecRoot:   filepath.Join(dir, "run/docker"),
		LogDir:           filepath.Join(dir, "log"),
		SystemRoot:       filepath.Join(dir, "root"),
		// Only a hang: a fake (the race-enabled test binary) on a loaded
		// machine may take seconds to answer.
		ProbeTimeout: time.Minute,
	}
}

// startRuntime builds a Runtime and shuts it down when the test ends,
// checking that every process it started is gone.
func startRuntime(t testing.TB, cfg Config) *Runtime {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for name, c := range r.children {
			if !c.hasExited() {
				t.Errorf("%s (pid %d) still running after Shutdown", name, c.pid)
			}
		}
	})
	return r
}

// controlTimer makes the Runtime's waits of kind k for service fire when
// the test closes the returned channel, not after their duration: the
// test decides when such a wait gives up, which a loaded machine then
// cannot make early or late. Call it before the Runtime's first Ensure.
func controlTimer(r *Runtime, service string, k waitKind) chan time.Time {
	fire := make(chan time.Time)
	real := r.timer
	r.timer = func(s string, kind waitKind, d time.Duration) (<-chan time.Time, func() bool) {
		if s == service && kind == k {
			return fire, func() bool { return true }
		}
		return real(s, kind, d)
	}
	return fire
}

// processGone reports whether pid no longer names a live process (a zombie
// counts as gone: it has ended, its parent has not reaped it yet).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// fakeDockerOn serves a fake dockerd (serveFakeDocker), not the Runtime's,
// on a unix socket at path; closing the listener takes it away.
func fakeDockerOn(t *testing.T, path string) net.Listener {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveFakeDocker(ln)
	return ln
}

// serveFakeDocker answers GET /_ping on ln as dockerd does.
func serveFakeDocker(ln net.Listener) {
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_ping" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "OK")
	}))
}
