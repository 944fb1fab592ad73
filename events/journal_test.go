package events

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// hang bounds a wait that should end at once; it only stops a hung test.
const hang = 60 * time.Second

// fixedClock returns times one second apart, so tests never read the clock.
func fixedClock() func() time.Time {
	var mu sync.Mutex
	t := time.Unix(1700000000, 0)
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(time.Second)
		return t
	}
}

func openJournal(t *testing.T, cfg Config) *Journal {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = fixedClock()
	}
	j, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// ev makes the i-th test event: sandboxes "a" and "b" in turn, actions
// "ready" and "idle" every other pair.
func ev(i int) Event {
	return Event{SandboxID: []string{"a", "b"}[i%2], Action: []string{"ready", "idle"}[i/2%2], Attributes: map[string]string{"i": fmt.Sprint(i)}}
}

func appendN(j *Journal, n int) []Event {
	out := make([]Event, n)
	for i := range out {
		out[i] = j.Append(ev(i))
	}
	return out
}

func next(t *testing.T, s *Subscription) Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	e, line, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	want := encodeLine(&e)
	if !bytes.Equal(line, want) {
		t.Fatalf("line %q, want %q", line, want)
	}
	return e
}

func wantSeqs(t *testing.T, s *Subscription, seqs ...uint64) {
	t.Helper()
	for _, want := range seqs {
		if got := next(t, s).Seq; got != want {
			t.Fatalf("got seq %d, want %d", got, want)
		}
	}
}

// waitBlocked waits until a subscriber waits for the next Append.
func waitBlocked(t *testing.T, j *Journal) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for !j.waiting.Load() {
		if time.Now().After(deadline) {
			t.Fatal("no subscriber ever waited")
		}
		time.Sleep(time.Millisecond)
	}
}

// copyDir copies the journal's files as they are now: what a restart after
// the agent was killed finds.
func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	des, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(from, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, de.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// diskLines returns the journal's segment lines, oldest first.
func diskLines(t *testing.T, dir string) []string {
	t.Helper()
	paths, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")...)
	}
	return lines
}

func lastSegment(t *testing.T, dir string) string {
	t.Helper()
	paths, err := listSegments(dir)
	if err != nil || len(paths) == 0 {
		t.Fatalf("segments of %s: %v %v", dir, paths, err)
	}
	return paths[len(paths)-1]
}

func TestSeqGrowsAndCleanRestartContinues(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, Config{Dir: dir})
	if o, l := j.Bounds(); o != 1 || l != 0 {
		t.Fatalf("new journal bounds (%d, %d), want (1, 0)", o, l)
	}
	for i, e := range appendN(j, 5) {
		if e.Seq != uint64(i+1) || e.Time.IsZero() {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, reserveName)); string(b) != "6\n" {
		t.Fatalf("reservation after Close: %q, want 6", b)
	}
	j = openJournal(t, Config{Dir: dir})
	if o, l := j.Bounds(); o != 1 || l != 5 {
		t.Fatalf("bounds after restart (%d, %d), want (1, 5)", o, l)
	}
	if e := j.Append(ev(5)); e.Seq != 6 {
		t.Fatalf("after a clean restart the next seq is %d, want 6", e.Seq)
	}
	s, err := j.Subscribe(After(0), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 6 {
		if e := next(t, s); e.Seq != uint64(i+1) || e.Attributes["i"] != fmt.Sprint(i) {
			t.Fatalf("replayed %+v, want seq %d, i %d", e, i+1, i)
		}
	}
}

func TestKillWithoutCloseContinuesAboveEverySeqHandedOut(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, Config{Dir: dir, Size: 100})
	appendN(j, 10)
	killed := copyDir(t, dir) // every write(2) done: what a kill leaves
	appendN(j, reserveBlock)  // past the first reservation
	killedLater := copyDir(t, dir)

	k := openJournal(t, Config{Dir: killed, Size: 100})
	if o, l := k.Bounds(); o != 1 || l != reserveBlock {
		t.Fatalf("bounds after a kill (%d, %d), want (1, %d)", o, l, reserveBlock)
	}
	if e := k.Append(ev(0)); e.Seq != reserveBlock+1 {
		t.Fatalf("after a kill the next seq is %d, want %d (above the reservation)", e.Seq, reserveBlock+1)
	}
	s, err := k.Subscribe(After(0), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	wantSeqs(t, s, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, reserveBlock+1)

	k2 := openJournal(t, Config{Dir: killedLater, Size: 100})
	if e := k2.Append(ev(0)); e.Seq <= reserveBlock+10 {
		t.Fatalf("after a kill the next seq is %d, not above the %d handed out", e.Seq, reserveBlock+10)
	}
}

func TestPowerLossNeverRepeatsSeqs(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, Config{Dir: dir})
	appendN(j, 10)
	lost := copyDir(t, dir)
	// The kernel wrote back only the first three lines.
	seg := lastSegment(t, lost)
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if err := os.WriteFile(seg, []byte(strings.Join(lines[:3], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	k := openJournal(t, Config{Dir: lost})
	if o, l := k.Bounds(); o != 1 || l < 10 {
		t.Fatalf("bounds after a power loss (%d, %d): last must be at least the 10 handed out", o, l)
	}
	if e := k.Append(ev(0)); e.Seq <= 10 {
		t.Fatalf("after a power loss the next seq is %d, a repeat", e.Seq)
	}
}

func TestTornLastLineIsCut(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, Config{Dir: dir})
	appendN(j, 3)
	killed := copyDir(t, dir)
	seg := lastSegment(t, killed)
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"seq":4,"act`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	var logs bytes.Buffer
	k := openJournal(t, Config{Dir: killed, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if !strings.Contains(logs.String(), "torn") || !strings.Contains(logs.String(), seg) {
		t.Errorf("the log does not say which file had a torn line:\n%s", logs.String())
	}
	if got := diskLines(t, killed); len(got) != 3 {
		t.Fatalf("after the cut the journal holds %d lines, want 3: %q", len(got), got)
	}
	e := k.Append(ev(3))
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	k = openJournal(t, Config{Dir: killed})
	s, err := k.Subscribe(After(0), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	wantSeqs(t, s, 1, 2, 3, e.Seq)
}

func TestLinesThatAreNotEventsAreSkipped(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, Config{Dir: dir})
	appendN(j, 2)
	j.Close()
	seg := lastSegment(t, dir)
	b, _ := os.ReadFile(seg)
	lines := strings.SplitAfter(string(b), "\n")
	garbled := lines[0] + "not json\n" + lines[0] + lines[1]
	if err := os.WriteFile(seg, []byte(garbled), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	k := openJournal(t, Config{Dir: dir, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if !strings.Contains(logs.String(), "lines=2") {
		t.Errorf("the log does not count the 2 skipped lines:\n%s", logs.String())
	}
	s, err := k.Subscribe(After(0), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	wantSeqs(t, s, 1, 2)
}

func TestTrimKeepsSizeEvents(t *testing.T) {
	dir := t.TempDir()
	const size = 8
	j := openJournal(t, Config{Dir: dir, Size: size})
	for i := range 100 {
		j.Append(ev(i))
		if n := len(diskLines(t, dir)); n < min(i+1, size) || n > size+size/segmentsPerSize {
			t.Fatalf("after %d events %d are on disk, want between %d and %d", i+1, n, min(i+1, size), size+size/segmentsPerSize)
		}
	}
	if o, l := j.Bounds(); o != 93 || l != 100 {
		t.Fatalf("bounds (%d, %d), want (93, 100)", o, l)
	}
	j.Close()
	j = openJournal(t, Config{Dir: dir, Size: size})
	if o, l := j.Bounds(); o != 93 || l != 100 {
		t.Fatalf("bounds after restart (%d, %d), want (93, 100)", o, l)
	}
	s, err := j.Subscribe(After(92), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	wantSeqs(t, s, 93, 94, 95, 96, 97, 98, 99, 100)
}

func TestSmallerSizeAtRestartKeepsTheNewest(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, Config{Dir: dir, Size: 50})
	appendN(j, 50)
	j.Close()
	j = openJournal(t, Config{Dir: dir, Size: 4})
	if o, l := j.Bounds(); o != 47 || l != 50 {
		t.Fatalf("bounds (%d, %d), want (47, 50)", o, l)
	}
	if n := len(diskLines(t, dir)); n < 4 || n > 50 {
		t.Fatalf("%d lines on disk", n)
	}
}

func TestBadReservationFailsOpenNamingTheFile(t *testing.T) {
	dir := t.TempDir()
	j := openJournal(t, Config{Dir: dir})
	appendN(j, 2)
	j.Close()
	path := filepath.Join(dir, reserveName)
	if err := os.WriteFile(path, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "hello") {
		t.Fatalf("Open with a garbage reservation: %v, want an error naming %s", err, path)
	}
	os.Remove(path)
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Open without the reservation: %v, want an error naming %s", err, path)
	}
}

func TestOpenRejectsABadSize(t *testing.T) {
	for _, size := range []int{-1, MaxSize + 1} {
		if _, err := Open(Config{Size: size}); err == nil || !strings.Contains(err.Error(), "Size") {
			t.Errorf("Size %d: %v, want an error naming Size", size, err)
		}
	}
}

func TestReplayThenLiveWithFilters(t *testing.T) {
	// Seqs 1..12 are, by ev: a ready, b ready, a idle, b idle, and again.
	for _, tc := range []struct {
		f          Filter
		replay     []uint64
		liveAfter8 []uint64 // of events 9..12
	}{
		{Filter{}, []uint64{4, 5, 6, 7, 8}, []uint64{9, 10, 11, 12}},
		{Filter{SandboxID: "a"}, []uint64{5, 7}, []uint64{9, 11}},
		{Filter{Action: "idle"}, []uint64{4, 7, 8}, []uint64{11, 12}},
		{Filter{SandboxID: "b", Action: "ready"}, []uint64{6}, []uint64{10}},
		{Filter{SandboxID: "nobody"}, nil, nil},
	} {
		t.Run(fmt.Sprintf("%+v", tc.f), func(t *testing.T) {
			j := openJournal(t, Config{Size: 100})
			appendN(j, 8)
			s, err := j.Subscribe(After(3), tc.f)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			wantSeqs(t, s, tc.replay...)
			for i := 8; i < 12; i++ {
				j.Append(ev(i))
			}
			wantSeqs(t, s, tc.liveAfter8...)
		})
	}
}

func TestLiveOnlyReplaysNothingAndMissesNothing(t *testing.T) {
	// The journal holds every event this test appends, so however the
	// scheduler interleaves the appender and the reader, nothing expires:
	// only Live's position decides what the subscriber sees.
	const before, during = 5, 500
	j := openJournal(t, Config{Size: 2 * (before + during)})
	appendN(j, before)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range during {
			j.Append(ev(i))
		}
	})
	s, err := j.Subscribe(Live(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, last := j.Bounds()
	wg.Wait()
	end := j.Append(ev(during)).Seq // the reader's stop mark, after every concurrent append
	first := next(t, s).Seq
	if first <= before || first > last+1 {
		t.Fatalf("the first live event is seq %d: not after the %d before Subscribe, or it missed some before seq %d", first, before, last+1)
	}
	for want := first + 1; want <= end; want++ {
		if got := next(t, s).Seq; got != want {
			t.Fatalf("got seq %d, want %d", got, want)
		}
	}
}

func TestExpiredAndFuture(t *testing.T) {
	j := openJournal(t, Config{Size: 10})
	appendN(j, 25) // keeps 16..25
	for _, tc := range []struct {
		after uint64
		want  error
	}{
		{0, &ExpiredError{After: 0, Oldest: 16}},
		{14, &ExpiredError{After: 14, Oldest: 16}},
		{26, &FutureError{After: 26, Last: 25}},
		{1 << 63, &FutureError{After: 1 << 63, Last: 25}},
	} {
		_, err := j.Subscribe(After(tc.after), Filter{})
		if err == nil || err.Error() != tc.want.Error() {
			t.Errorf("After(%d): %v, want %v", tc.after, err, tc.want)
		}
		var exp *ExpiredError
		var fut *FutureError
		if !errors.As(err, &exp) && !errors.As(err, &fut) {
			t.Errorf("After(%d): %T is neither *ExpiredError nor *FutureError", tc.after, err)
		}
	}
	if !strings.Contains((&ExpiredError{After: 14, Oldest: 16}).Error(), "oldest kept is seq 16") {
		t.Error("the ExpiredError message does not name the oldest seq kept")
	}
	for after, first := range map[uint64]uint64{15: 16, 20: 21} {
		s, err := j.Subscribe(After(after), Filter{})
		if err != nil {
			t.Fatalf("After(%d): %v", after, err)
		}
		wantSeqs(t, s, first)
		s.Close()
	}
	s, err := j.Subscribe(After(25), Filter{}) // the newest: nothing to replay
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	j.Append(ev(0))
	wantSeqs(t, s, 26)
}

func TestEmptyJournalBounds(t *testing.T) {
	j := openJournal(t, Config{})
	if _, err := j.Subscribe(After(0), Filter{}); err != nil {
		t.Fatalf("After(0) on a new journal: %v", err)
	}
	var fut *FutureError
	if _, err := j.Subscribe(After(1), Filter{}); !errors.As(err, &fut) || fut.Last != 0 {
		t.Fatalf("After(1) on a new journal: %v, want a FutureError with Last 0", err)
	}
}

func TestSlowSubscriberCatchesUp(t *testing.T) {
	const size = 16
	for _, n := range []int{size - 1, size} {
		j := openJournal(t, Config{Size: size})
		appendN(j, 3)
		s, err := j.Subscribe(Live(), Filter{})
		if err != nil {
			t.Fatal(err)
		}
		appendN(j, n) // read nothing meanwhile
		for want := uint64(4); want < uint64(4+n); want++ {
			if got := next(t, s).Seq; got != want {
				t.Fatalf("%d behind: got seq %d, want %d", n, got, want)
			}
		}
		s.Close()
	}
}

func TestSubscriberMoreThanSizeBehindFellBehind(t *testing.T) {
	const size, k = 16, 5
	j := openJournal(t, Config{Size: size})
	appendN(j, 3)
	s, err := j.Subscribe(Live(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendN(j, size+k) // 4..24; kept 9..24
	_, _, err = s.Next(context.Background())
	var fb *FellBehindError
	if !errors.As(err, &fb) || fb.Next != 4 || fb.Oldest != 4+k {
		t.Fatalf("Next: %v, want FellBehindError{Next: 4, Oldest: %d}", err, 4+k)
	}
	if _, _, err2 := s.Next(context.Background()); err2 != err {
		t.Fatalf("the next Next: %v, want the same error", err2)
	}
	var exp *ExpiredError
	if _, err := j.Subscribe(After(fb.Next-1), Filter{}); !errors.As(err, &exp) || exp.Oldest != fb.Oldest {
		t.Fatalf("resubscribing after %d: %v, want ExpiredError with Oldest %d", fb.Next-1, err, fb.Oldest)
	}
}

func TestCloseEndsSubscriptions(t *testing.T) {
	j := openJournal(t, Config{Dir: t.TempDir()})
	s, err := j.Subscribe(Live(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan error, 1)
	go func() {
		_, _, err := s.Next(context.Background())
		got <- err
	}()
	waitBlocked(t, j)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; !errors.Is(err, ErrClosed) {
		t.Fatalf("a blocked Next after Close: %v, want ErrClosed", err)
	}
	if _, err := j.Subscribe(Live(), Filter{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe after Close: %v, want ErrClosed", err)
	}
	if e := j.Append(ev(0)); e.Seq != 0 {
		t.Fatalf("Append after Close assigned seq %d", e.Seq)
	}
	if err := j.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
}

func TestContextAndSubscriptionCloseEndNext(t *testing.T) {
	j := openJournal(t, Config{})
	s, err := j.Subscribe(Live(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		_, _, err := s.Next(ctx)
		got <- err
	}()
	waitBlocked(t, j)
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v, want context.Canceled", err)
	}
	j.Append(ev(0))
	wantSeqs(t, s, 1) // a cancelled Next loses nothing

	go func() {
		_, _, err := s.Next(context.Background())
		got <- err
	}()
	waitBlocked(t, j)
	s.Close()
	if err := <-got; !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after the subscription's Close: %v, want ErrClosed", err)
	}
	s.Close()
}

func TestWriteFailureKeepsServing(t *testing.T) {
	var logs bytes.Buffer
	j := openJournal(t, Config{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	s, err := j.Subscribe(Live(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	j.Append(ev(0))
	j.store.f.Close() // every write now fails, as on a full disk
	appendN(j, 3)
	if n := testutil.ToFloat64(j.metrics.writeErrors); n != 3 {
		t.Fatalf("%v write errors counted, want 3", n)
	}
	if n := strings.Count(logs.String(), "writing to disk failed"); n != 1 {
		t.Fatalf("the failure streak was logged %d times, want once:\n%s", n, logs.String())
	}
	j.store.f = nil // the disk has room again: a new segment
	j.Append(ev(4))
	if !strings.Contains(logs.String(), "works again") {
		t.Fatalf("the recovery was not logged:\n%s", logs.String())
	}
	wantSeqs(t, s, 1, 2, 3, 4, 5)
}

func TestConcurrentAppendersAndSubscribers(t *testing.T) {
	const appenders, each = 6, 400
	j := openJournal(t, Config{Dir: t.TempDir(), Size: appenders * each})
	filters := []Filter{{}, {SandboxID: "a"}, {SandboxID: "b"}, {Action: "idle"}, {SandboxID: "a", Action: "ready"}, {}}
	want := make([]int, len(filters)) // events each filter passes
	for range appenders {
		for i := range each {
			e := ev(i)
			for k, f := range filters {
				if f.Match(&e) {
					want[k]++
				}
			}
		}
	}
	got := make([][]uint64, len(filters))
	var subs sync.WaitGroup
	for k, f := range filters {
		s, err := j.Subscribe(Live(), f)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		subs.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), hang)
			defer cancel()
			for range want[k] {
				e, _, err := s.Next(ctx)
				if err != nil {
					t.Errorf("subscriber %d: %v", k, err)
					return
				}
				if !f.Match(&e) {
					t.Errorf("subscriber %d got %+v", k, e)
				}
				got[k] = append(got[k], e.Seq)
			}
		})
	}
	appended := make(chan Event, appenders*each)
	var pubs sync.WaitGroup
	for range appenders {
		pubs.Go(func() {
			for i := range each {
				appended <- j.Append(ev(i))
			}
		})
	}
	pubs.Wait()
	subs.Wait()
	close(appended)
	wantSeqs := make([][]uint64, len(filters))
	for e := range appended {
		for k, f := range filters {
			if f.Match(&e) {
				wantSeqs[k] = append(wantSeqs[k], e.Seq)
			}
		}
	}
	for k := range filters {
		slices.Sort(wantSeqs[k])
		if fmt.Sprint(got[k]) != fmt.Sprint(wantSeqs[k]) {
			t.Errorf("subscriber %d (%+v) got %d events, want %d, in order, once each", k, filters[k], len(got[k]), len(wantSeqs[k]))
		}
	}
}

func TestPendingSaysWhenNextWillNotWait(t *testing.T) {
	j := openJournal(t, Config{Size: 100})
	appendN(j, 4) // a ready, b ready, a idle, b idle
	s, err := j.Subscribe(After(0), Filter{SandboxID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, want := range []uint64{1, 3} {
		if !s.Pending() {
			t.Fatalf("Pending false before seq %d", want)
		}
		wantSeqs(t, s, want)
	}
	// Seq 4 is b's: nothing for this filter is ready.
	if s.Pending() {
		t.Fatal("Pending true with only another sandbox's event left")
	}
	j.Append(ev(4))
	if !s.Pending() {
		t.Fatal("Pending false after a matching Append")
	}
	wantSeqs(t, s, 5)
}
