//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox/oci"
)

// The tests below drive arcboxctl as a person does: the binary, built
// once, run as a process against a real agent (the agent binary, with
// sandboxes) over its unix socket, and, for exec -it, inside a terminal
// tmux gives it, typed at with send-keys and read with capture-pane. They
// run as root inside the namespaces testenv.RunIsolated makes.

// live is what the tests against the agent share, set up on first need.
var live struct {
	dir string // everything lives under it

	once  sync.Once
	ctl   string // the arcboxctl binary
	agent *agenttest.Agent
	err   error
}

func TestMain(m *testing.M) {
	if os.Getenv("ARCBOX_TEST_ISOLATED") != "1" || os.Geteuid() != 0 {
		// As root: run again inside new namespaces and come back through
		// the branch below. Else the agent tests skip (fail under CI).
		os.Exit(testenv.RunIsolated(m))
	}
	// A short directory: unix socket paths must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "abctl-")
	if err == nil {
		// Sandbox roots are unprivileged users: the path to their root
		// filesystems must be searchable.
		err = os.Chmod(dir, 0o711)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	live.dir = dir
	code := m.Run()
	if err := shutdownLive(); err != nil {
		fmt.Fprintln(os.Stderr, "cmd/arcboxctl: cleanup:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// shutdownLive removes the sandboxes the tests left (there should be
// none), stops the agent, and removes what it made.
func shutdownLive() error {
	var problems []string
	if a := live.agent; a != nil && a.Running() {
		if left := a.RemoveSandboxes(); len(left) > 0 {
			problems = append(problems, fmt.Sprintf("sandboxes left by the tests, removed now: %v", left))
		}
		if err := a.Stop(); err != nil {
			problems = append(problems, err.Error())
		}
		if err := removeCgroups(oci.DefaultCgroupParent(a.Path("state"))); err != nil {
			problems = append(problems, err.Error())
		}
	}
	agenttest.RemoveBinary()
	if left := agenttest.UnmountUnder(live.dir); len(left) > 0 {
		problems = append(problems, fmt.Sprintf("could not unmount %v; leaving %s", left, live.dir))
	} else if err := os.RemoveAll(live.dir); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// removeCgroups removes the agent's parent cgroup of its sandboxes,
// wherever the OCI runtime made it: at a hierarchy's root or under this
// process's own cgroup.
func removeCgroups(name string) error {
	var own []string
	if data, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for line := range strings.Lines(string(data)) {
			if parts := strings.SplitN(strings.TrimSpace(line), ":", 3); len(parts) == 3 {
				own = append(own, parts[2])
			}
		}
	}
	roots := []string{"/sys/fs/cgroup"}
	if all, err := filepath.Glob("/sys/fs/cgroup/*"); err == nil {
		for _, m := range all {
			if st, err := os.Stat(filepath.Join(m, "cgroup.procs")); err == nil && !st.IsDir() {
				roots = append(roots, m)
			}
		}
	}
	var errs []error
	for _, root := range roots {
		for _, base := range append([]string{"/"}, own...) {
			d := filepath.Join(root, base, name)
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				if err := os.Remove(d); err != nil {
					errs = append(errs, fmt.Errorf("cgroup %s left: %w", d, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// liveAgent returns arcboxctl's binary and the agent the tests share,
// building and starting them once; a test that cannot run here skips
// (fails under CI).
func liveAgent(t testing.TB) (ctl string, a *agenttest.Agent) {
	t.Helper()
	testenv.RequireIsolated(t)
	bb := testenv.RequireBinary(t, "busybox")
	if _, err := exec.LookPath("runc"); err != nil {
		testenv.RequireBinary(t, "crun")
	}
	live.once.Do(func() {
		if live.ctl, live.err = buildCtl(live.dir); live.err != nil {
			return
		}
		a := &agenttest.Agent{Dir: filepath.Join(live.dir, "agent")}
		a.Args = agenttest.Flags(a.Dir, "--sandbox-busybox", bb, "--set-clock=false", "--prepare-system=false", "--log-format", "json")
		a.ReadyPath = "/v1/sandboxes"
		live.agent, live.err = a, a.Start()
		if live.err == nil {
			live.err = os.Chmod(a.Dir, 0o711)
		}
	})
	if live.err != nil {
		t.Fatal(live.err)
	}
	live.agent.LogOnFailure(t)
	return live.ctl, live.agent
}

// buildCtl builds arcboxctl into dir, as make build does.
func buildCtl(dir string) (string, error) {
	bin := filepath.Join(dir, "arcboxctl")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "github.com/arcbox/arcbox-agent/cmd/arcboxctl")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build arcboxctl: %w\n%s", err, out)
	}
	return bin, nil
}

// ctlRun runs arcboxctl against agent a and returns what it did.
func ctlRun(t *testing.T, ctl string, a *agenttest.Agent, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ctl, args...)
	cmd.Env = append(os.Environ(), "ARCBOX_HOST=unix://"+a.Socket())
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("arcboxctl %v: %v", args, err)
	}
	return result{out.String(), errOut.String(), cmd.ProcessState.ExitCode()}
}

// mustCtl runs arcboxctl and fails t unless it exits 0.
func mustCtl(t *testing.T, ctl string, a *agenttest.Agent, args ...string) string {
	t.Helper()
	r := ctlRun(t, ctl, a, args...)
	if r.code != 0 {
		t.Fatalf("arcboxctl %v: exit %d, stderr %q", args, r.code, r.stderr)
	}
	return r.stdout
}

// TestAgentRun checks run against a real sandbox: its streams kept apart,
// its exit code as arcboxctl's, and the bad inputs a person makes.
func TestAgentRun(t *testing.T) {
	ctl, a := liveAgent(t)
	if got := mustCtl(t, ctl, a, "sandbox", "create", "--id", "ctl-run", "--label", "suite=ctl"); got != "ctl-run\n" {
		t.Fatalf("create printed %q, want the id", got)
	}
	t.Cleanup(func() { ctlRun(t, ctl, a, "sandbox", "rm", "-f", "ctl-run") })

	r := ctlRun(t, ctl, a, "run", "ctl-run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	if r.code != 3 || r.stdout != "out\n" || r.stderr != "err\n" {
		t.Errorf("run: exit %d, stdout %q, stderr %q; want 3, \"out\\n\", \"err\\n\"", r.code, r.stdout, r.stderr)
	}
	r = ctlRun(t, ctl, a, "run", "--env", "GREETING=hi", "--workdir", "/tmp", "ctl-run", "sh", "-c", `echo "$GREETING from $PWD"`)
	if r.code != 0 || r.stdout != "hi from /tmp\n" {
		t.Errorf("run with --env and --workdir: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = ctlRun(t, ctl, a, "run", "ctl-run", "--", "sh", "-c", "kill -TERM $$")
	if r.code != 128+15 {
		t.Errorf("a command killed by SIGTERM: exit %d, want 143", r.code)
	}
	r = ctlRun(t, ctl, a, "run", "ctl-run", "--", "no-such-command")
	if r.code != 127 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "no-such-command") {
		t.Errorf("a command that does not exist: exit %d, stdout %q, stderr %q; want 127 and one line naming it", r.code, r.stdout, r.stderr)
	}
	r = ctlRun(t, ctl, a, "run", "no-such-box", "--", "true")
	if r.code != 1 || r.stderr != "arcboxctl: sandbox \"no-such-box\" (404 Not Found)\n" {
		t.Errorf("an unknown sandbox: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, host := range []string{"unix://" + filepath.Join(t.TempDir(), "none.sock"), "ftp://agent"} {
		r = ctlRun(t, ctl, a, "--host", host, "sandbox", "ls")
		if r.code == 0 || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "arcboxctl: ") {
			t.Errorf("--host %s: exit %d, stderr %q; want one line and a failure", host, r.code, r.stderr)
		}
	}

	if got := mustCtl(t, ctl, a, "sandbox", "ls", "-q", "--label", "suite=ctl", "--state", "ready"); got != "ctl-run\n" {
		t.Errorf("ls -q filtered: %q", got)
	}
	var info api.SandboxInfo
	if err := json.Unmarshal([]byte(mustCtl(t, ctl, a, "-o", "json", "sandbox", "inspect", "ctl-run")), &info); err != nil || info.Id != "ctl-run" || deref(info.LastExitCode) != 127 {
		t.Errorf("inspect -o json: %+v, %v", info, err)
	}
}

// TestAgentLifecycle checks checkpoint, restore, snapshot ls and rm, stop
// and the events they leave, against a real agent.
func TestAgentLifecycle(t *testing.T) {
	ctl, a := liveAgent(t)
	mustCtl(t, ctl, a, "sandbox", "create", "--id", "ctl-life")
	t.Cleanup(func() { ctlRun(t, ctl, a, "sandbox", "rm", "-f", "ctl-life", "ctl-life2") })
	mustCtl(t, ctl, a, "run", "ctl-life", "--", "sh", "-c", "echo kept > /root/file")
	snap := strings.TrimSpace(mustCtl(t, ctl, a, "checkpoint", "ctl-life", "--name", "first"))
	t.Cleanup(func() { ctlRun(t, ctl, a, "snapshot", "rm", snap) })
	if got := mustCtl(t, ctl, a, "snapshot", "ls", "-q", "--sandbox", "ctl-life"); got != snap+"\n" {
		t.Errorf("snapshot ls: %q, want %s", got, snap)
	}
	if got := mustCtl(t, ctl, a, "restore", snap, "--id", "ctl-life2"); got != "ctl-life2\n" {
		t.Errorf("restore printed %q", got)
	}
	if got := mustCtl(t, ctl, a, "run", "ctl-life2", "cat", "/root/file"); got != "kept\n" {
		t.Errorf("the restored sandbox's file: %q", got)
	}
	mustCtl(t, ctl, a, "sandbox", "stop", "ctl-life2")
	if got := mustCtl(t, ctl, a, "sandbox", "rm", "ctl-life2", "ctl-life"); got != "ctl-life2\nctl-life\n" {
		t.Errorf("rm printed %q", got)
	}
	mustCtl(t, ctl, a, "snapshot", "rm", snap)
	events := mustCtl(t, ctl, a, "events", "--sandbox", "ctl-life2")
	for _, action := range []string{"created", "ready", "stopped", "removed"} {
		if !strings.Contains(events, " "+action+" ") {
			t.Errorf("events of ctl-life2 lack %s:\n%s", action, events)
		}
	}
}

// pane is a tmux server of the test's own, with one window of 80x24.
type pane struct {
	t    *testing.T
	sock string
}

func newPane(t *testing.T, command string) *pane {
	testenv.RequireBinary(t, "tmux")
	p := &pane{t: t, sock: fmt.Sprintf("arcboxctl-test-%d", os.Getpid())}
	p.tmux("-f", "/dev/null", "new-session", "-d", "-x", "80", "-y", "24", "-s", "t", command)
	t.Cleanup(func() { _ = exec.Command("tmux", "-L", p.sock, "kill-server").Run() })
	return p
}

func (p *pane) tmux(args ...string) string {
	p.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", p.sock}, args...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// send types keys (tmux key names: "Enter", "C-c").
func (p *pane) send(keys ...string) { p.tmux(append([]string{"send-keys", "-t", "t"}, keys...)...) }

// waitFor polls the screen until it shows want, and fails t after a
// minute, showing the screen.
func (p *pane) waitFor(want string) { p.t.Helper(); p.waitRetyping(want) }

// waitRetyping is waitFor that types keys again each second want has not
// shown: for what races a signal, as a command typed just after a resize
// may reach the sandbox before the new size does.
func (p *pane) waitRetyping(want string, keys ...string) {
	p.t.Helper()
	var screen string
	last := time.Now()
	ok := agenttest.WaitFor(time.Minute, func() bool {
		screen = p.tmux("capture-pane", "-p", "-t", "t")
		if strings.Contains(screen, want) {
			return true
		}
		if len(keys) > 0 && time.Since(last) > time.Second {
			p.send(keys...)
			last = time.Now()
		}
		return false
	})
	if !ok {
		p.t.Fatalf("the screen never showed %q:\n%s", want, screen)
	}
}

// TestAgentExecInteractive types at an interactive shell in a sandbox
// through arcboxctl exec -it in a real terminal: the shell echoes, sees
// the window's size at start and after a resize, Ctrl-C interrupts its
// foreground command and not arcboxctl, the shell's exit code is
// arcboxctl's, and the terminal is back to normal after.
func TestAgentExecInteractive(t *testing.T) {
	ctl, a := liveAgent(t)
	mustCtl(t, ctl, a, "sandbox", "create", "--id", "ctl-tty")
	t.Cleanup(func() { ctlRun(t, ctl, a, "sandbox", "rm", "-f", "ctl-tty") })
	// The pane's shell runs arcboxctl, then says how it ended and stays,
	// so the terminal can be checked after.
	p := newPane(t, fmt.Sprintf("ARCBOX_HOST=unix://%s %s exec -it ctl-tty -- sh; echo \"arcboxctl exited $?\"; exec sh", a.Socket(), ctl))

	// Typed text comes back computed, so the screen shows it only when the
	// shell in the sandbox ran it.
	p.send("echo hi-$((6*7))", "Enter")
	p.waitFor("hi-42")
	p.send("stty size", "Enter")
	p.waitFor("24 80")
	p.tmux("resize-window", "-t", "t", "-x", "100", "-y", "30")
	p.send("stty size", "Enter")
	p.waitRetyping("30 100", "stty size", "Enter")

	p.send("sh -c 'echo sleeping-$((1+1)); exec sleep 1000'", "Enter")
	p.waitFor("sleeping-2")
	p.send("C-c")
	// The shell reads this only once the sleep has ended.
	p.send("echo alive-$((2+3))", "Enter")
	p.waitFor("alive-5")

	p.send("exit 5", "Enter")
	p.waitFor("arcboxctl exited 5")
	// Back in the pane's own shell: the terminal must be cooked again
	// (a raw one would neither echo this nor end its line on Enter).
	p.send("stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo|isig)' | tr '\\n' ' '; echo :modes", "Enter")
	p.waitFor("isig icanon echo :modes")
}

// BenchmarkRunFirstOutput measures the time from starting arcboxctl run
// to the command's first byte on its stdout, beside the same run through
// curl, and reports the medians. Both are processes started per run, as
// a person at a shell starts them.
func BenchmarkRunFirstOutput(b *testing.B) {
	ctl, a := liveAgent(b)
	curl := testenv.RequireBinary(b, "curl")
	hc := &http.Client{Transport: a.Transport()}
	resp, err := hc.Post("http://agent/v1/sandboxes", "application/json", strings.NewReader(`{"id":"ctl-bench"}`))
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	b.Cleanup(func() {
		req, _ := http.NewRequest(http.MethodDelete, "http://agent/v1/sandboxes/ctl-bench?force=true", nil)
		if r, err := hc.Do(req); err == nil {
			r.Body.Close()
		}
	})
	if !agenttest.WaitFor(time.Minute, func() bool {
		r, err := hc.Get("http://agent/v1/sandboxes/ctl-bench")
		if err != nil {
			return false
		}
		defer r.Body.Close()
		var info api.SandboxInfo
		return json.NewDecoder(r.Body).Decode(&info) == nil && info.State == api.SandboxStateReady
	}) {
		b.Fatal("the sandbox was not ready within a minute")
	}
	for _, tc := range []struct {
		name string
		argv []string
		env  []string
	}{
		{"arcboxctl", []string{ctl, "run", "ctl-bench", "--", "echo", "hi"}, []string{"ARCBOX_HOST=unix://" + a.Socket()}},
		{"curl", []string{curl, "-sN", "--unix-socket", a.Socket(), "http://agent/v1/sandboxes/ctl-bench/run", "--json", `{"cmd":["echo","hi"]}`}, nil},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var took []time.Duration
			for b.Loop() {
				took = append(took, firstOutput(b, tc.argv, tc.env))
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms-p50")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "ms-p99")
		})
	}
}

// firstOutput starts argv and returns how long its first byte on stdout
// took, then waits for it to end.
func firstOutput(b *testing.B, argv, env []string) time.Duration {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := io.ReadFull(out, one); err != nil {
		b.Fatalf("%v: no output: %v", argv, err)
	}
	took := time.Since(began)
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		b.Fatalf("%v: %v", argv, err)
	}
	return took
}
