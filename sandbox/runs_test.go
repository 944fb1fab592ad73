package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"golang.org/x/sys/unix"
)

// readAll reads a run's output from offset to its end, following.
func readAll(t *testing.T, m *Manager, id, runID string, offset int64) ([]OutputChunk, RunInfo) {
	t.Helper()
	var got []OutputChunk
	info, err := m.ReadRunOutput(context.Background(), id, runID, offset, true, func(cs []OutputChunk) error {
		for _, c := range cs {
			c.Data = bytes.Clone(c.Data)
			got = append(got, c)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ReadRunOutput(%s, %d): %v", runID, offset, err)
	}
	return got, info
}

// joined checks the chunks' offsets follow each other from offset, and
// returns their bytes, by stream.
func joined(t *testing.T, chunks []OutputChunk, offset int64) (stdout, stderr []byte) {
	t.Helper()
	for _, c := range chunks {
		if c.Offset != offset {
			t.Fatalf("chunk at offset %d, want %d", c.Offset, offset)
		}
		offset += int64(len(c.Data))
		if c.Stream == StreamStdout {
			stdout = append(stdout, c.Data...)
		} else {
			stderr = append(stderr, c.Data...)
		}
	}
	return stdout, stderr
}

func TestDetachedRunOutputAndEvents(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "d"})
	info, err := h.m.StartRun("d", RunRequest{Process: Process{Cmd: []string{"burst", "100000"}}})
	if err != nil {
		t.Fatal(err)
	}
	if info.ID == "" || !info.Detached || info.Pid == 0 || info.SandboxID != "d" {
		t.Fatalf("StartRun = %+v, want an id, detached, a pid", info)
	}
	evs := h.expect("d", ActionRunning, ActionRunStarted, ActionRunExited, ActionIdle)
	if evs[1].Attributes["run_id"] != info.ID || evs[2].Attributes["run_id"] != info.ID || evs[2].Attributes["exit_code"] != "0" {
		t.Errorf("run events %v, %v; want run_id %s, exit_code 0", evs[1].Attributes, evs[2].Attributes, info.ID)
	}
	chunks, end := readAll(t, h.m, "d", info.ID, 0)
	stdout, stderr := joined(t, chunks, 0)
	want := floodPattern(100000)
	if !bytes.Equal(stdout, want) || !bytes.Equal(stderr, want) {
		t.Fatalf("kept %d bytes of stdout and %d of stderr, want %d of each", len(stdout), len(stderr), len(want))
	}
	if end.State != RunExited || end.ExitCode == nil || *end.ExitCode != 0 || end.OutputEnd != 200000 || end.OutputFirst != 0 {
		t.Errorf("ended run %+v", end)
	}
	// Resuming from any offset gets exactly the bytes after it, in the
	// order the streams were read.
	var whole []byte
	for _, c := range chunks {
		whole = append(whole, c.Data...)
	}
	for _, off := range []int64{1, 99999, 100000, 150001, 200000} {
		chunks, _ := readAll(t, h.m, "d", info.ID, off)
		var all []byte
		for _, c := range chunks {
			all = append(all, c.Data...)
		}
		if !bytes.Equal(all, whole[off:]) {
			t.Errorf("from %d: %d bytes, not the %d after it", off, len(all), 200000-off)
		}
	}
	runs, err := h.m.Runs("d")
	if err != nil || len(runs) != 1 || runs[0].ID != info.ID {
		t.Errorf("Runs = %+v, %v", runs, err)
	}
}

func TestRunOutputBoundDropsTheOldest(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RunOutputBytes = 10000 })
	h.createReady(Spec{ID: "b"})
	info, err := h.m.StartRun("b", RunRequest{Process: Process{Cmd: []string{"flood", "123457"}}})
	if err != nil {
		t.Fatal(err)
	}
	h.expect("b", ActionRunExited)
	r, _ := h.m.GetRun("b", info.ID)
	if r.OutputEnd != 123457 || r.OutputFirst != 123457-10000 {
		t.Fatalf("kept [%d, %d), want the last 10000 bytes of 123457", r.OutputFirst, r.OutputEnd)
	}
	var gone *OutputGoneError
	_, err = h.m.ReadRunOutput(context.Background(), "b", info.ID, 5, false, func([]OutputChunk) error { return nil })
	if !errors.As(err, &gone) || gone.First != r.OutputFirst {
		t.Fatalf("read from a dropped offset: %v, want an OutputGoneError at %d", err, r.OutputFirst)
	}
	chunks, _ := readAll(t, h.m, "b", info.ID, r.OutputFirst)
	stdout, _ := joined(t, chunks, r.OutputFirst)
	if !bytes.Equal(stdout, floodPattern(123457)[r.OutputFirst:]) {
		t.Errorf("kept bytes are not the last ones written")
	}
	for _, off := range []int64{-1, 123458} {
		if _, err := h.m.ReadRunOutput(context.Background(), "b", info.ID, off, true, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("offset %d: %v, want ErrInvalid", off, err)
		}
	}
}

func TestRunsConcurrentAndCapped(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxRuns = 50 })
	h.createReady(Spec{ID: "many"})
	var ids []string
	for range 50 {
		info, err := h.m.StartRun("many", RunRequest{Process: Process{Cmd: []string{"block"}}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	if _, err := h.m.StartRun("many", RunRequest{Process: Process{Cmd: []string{"echo"}}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a run past the cap: %v, want ErrConflict", err)
	}
	if _, err := h.m.Checkpoint(context.Background(), "many", CheckpointRequest{}); !errors.Is(err, ErrConflict) {
		t.Errorf("Checkpoint with runs in progress: %v, want ErrConflict", err)
	}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			if err := h.m.SignalRun(context.Background(), "many", id, unix.SIGINT); err != nil {
				t.Errorf("SignalRun %s: %v", id, err)
			}
		})
	}
	wg.Wait()
	h.expect("many", ActionIdle)
	runs, _ := h.m.Runs("many")
	for _, r := range runs {
		if r.State != RunExited || r.ExitCode == nil || *r.ExitCode != 130 || r.Signal != "SIGINT" {
			t.Errorf("run %+v, want exited 130 by SIGINT", r)
		}
	}
	if st := h.state("many"); st != StateReady {
		t.Errorf("state %s after every run ended, want ready", st)
	}
	if err := h.m.SignalRun(context.Background(), "many", ids[0], unix.SIGINT); !errors.Is(err, ErrConflict) {
		t.Errorf("signal to an ended run: %v, want ErrConflict", err)
	}
}

func TestRunsOfAnotherSandboxAndBadInput(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "one"})
	h.createReady(Spec{ID: "two"})
	info, err := h.m.StartRun("one", RunRequest{Process: Process{Cmd: []string{"echo", "x"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.GetRun("two", info.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("a run of another sandbox: %v, want ErrNotFound", err)
	}
	if err := h.m.SignalRun(context.Background(), "two", info.ID, unix.SIGINT); !errors.Is(err, ErrNotFound) {
		t.Errorf("signal to a run of another sandbox: %v, want ErrNotFound", err)
	}
	for _, name := range []string{"", "SIGNOPE", "sigint", "9", "SIG"} {
		if _, err := ParseSignal(name); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSignal(%q): %v, want ErrInvalid", name, err)
		}
	}
	for name, want := range map[string]unix.Signal{"SIGINT": unix.SIGINT, "HUP": unix.SIGHUP, "USR1": unix.SIGUSR1, "SIGKILL": unix.SIGKILL} {
		if got, err := ParseSignal(name); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
}

func TestDetachedRunStdin(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "in"})
	info, err := h.m.StartRun("in", RunRequest{Process: Process{Cmd: []string{"cat"}}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Stdin {
		t.Errorf("run %+v: stdin not open", info)
	}
	for i := range 3 {
		if err := h.m.WriteRunStdin(context.Background(), "in", info.ID, fmt.Appendf(nil, "line %d\n", i), i == 2); err != nil {
			t.Fatal(err)
		}
	}
	chunks, end := readAll(t, h.m, "in", info.ID, 0)
	stdout, _ := joined(t, chunks, 0)
	if string(stdout) != "line 0\nline 1\nline 2\n" || end.ExitCode == nil || *end.ExitCode != 0 {
		t.Errorf("cat gave %q, %+v", stdout, end)
	}
	if err := h.m.WriteRunStdin(context.Background(), "in", info.ID, []byte("late"), false); !errors.Is(err, ErrConflict) {
		t.Errorf("stdin after close: %v, want ErrConflict", err)
	}
	// A run without stdin sees its end at once.
	info, err = h.m.StartRun("in", RunRequest{Process: Process{Cmd: []string{"cat"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.m.WriteRunStdin(context.Background(), "in", info.ID, []byte("x"), false); !errors.Is(err, ErrConflict) {
		t.Errorf("stdin of a run without it: %v, want ErrConflict", err)
	}
}

// TestDetachOnDisconnect: an attached run that detaches on disconnect goes
// on without its client, and its output (before and after) is kept.
func TestDetachOnDisconnect(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "dd"})
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan RunInfo, 1)
	done := make(chan error)
	var code int
	go func() {
		var err error
		code, err = h.m.Exec(ctx, "dd", Process{Cmd: []string{"block"}, DetachOnDisconnect: true},
			ExecIO{Started: func(i RunInfo) { started <- i }}, func(Output) error { return nil })
		done <- err
	}()
	info := <-started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || code != ExitDetached {
		t.Fatalf("Exec after its client went = %d, %v; want ExitDetached, context.Canceled", code, err)
	}
	if r, _ := h.m.GetRun("dd", info.ID); r.State != RunRunning || !r.Detached {
		t.Fatalf("run after its client went: %+v, want running, detached", r)
	}
	if sigs := h.backend.process(t, 0).signals(); len(sigs) != 0 {
		t.Errorf("signals %v, want none", sigs)
	}
	if err := h.m.SignalRun(context.Background(), "dd", info.ID, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_, end := readAll(t, h.m, "dd", info.ID, 0)
	if end.ExitCode == nil || *end.ExitCode != 143 || end.Signal != "SIGTERM" {
		t.Errorf("ended %+v, want 143 by SIGTERM", end)
	}
}

// TestStopEndsEveryRun: a stop sends every run SIGTERM, then SIGKILL.
func TestStopEndsEveryRun(t *testing.T) {
	h := newHarness(t)
	h.createReady(Spec{ID: "st"})
	for _, cmd := range []string{"block", "stubborn", "block"} {
		if _, err := h.m.StartRun("st", RunRequest{Process: Process{Cmd: []string{cmd}}}); err != nil {
			t.Fatal(err)
		}
	}
	stopped := make(chan error)
	go func() {
		_, err := h.m.Stop(context.Background(), "st", 0)
		stopped <- err
	}()
	h.expect("st", ActionStopping)
	for i := range 3 {
		e := h.backend.process(t, i)
		sandboxtest.WaitFor(t, "SIGTERM", func() bool { return len(e.signals()) > 0 })
	}
	sandboxtest.WaitFor(t, "the grace timers", func() bool { return h.clock.pending() >= 3 })
	h.clock.Advance(DefaultStopTimeout)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	runs, _ := h.m.Runs("st")
	codes := []int{}
	for _, r := range runs {
		codes = append(codes, *r.ExitCode)
	}
	if !slices.Equal(codes, []int{143, 137, 143}) {
		t.Errorf("exit codes %v, want 143, 137, 143", codes)
	}
}
