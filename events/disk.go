package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const (
	segmentPrefix = "events-"
	segmentSuffix = ".ndjson"
	// reserveName holds the reservation: "every seq below this may have
	// been handed out". It is the only file that is fsynced on the hot
	// path, once every reserveBlock events.
	reserveName  = "next-seq"
	reserveBlock = 4096
	// segmentsPerSize sets the rotation: a segment holds Size/segmentsPerSize
	// events, so between Size and Size*(1+1/segmentsPerSize) are on disk.
	segmentsPerSize = 4
)

// segment is one file of the journal, named after the first seq it was
// opened for.
type segment struct {
	path  string
	count int // events in it
}

// store is the journal on disk: NDJSON segments and the reservation. It is
// used under Journal.wmu only.
type store struct {
	dir      string
	keep     int // events that must stay on disk
	segCap   int // events per segment
	segs     []segment
	f        *os.File // the last segment, open for appending; nil: the next write starts one
	size     int64    // bytes of f that are whole lines
	reserved uint64   // the reservation on disk: seqs below it may have been handed out
}

func segmentName(first uint64) string {
	return fmt.Sprintf("%s%020d%s", segmentPrefix, first, segmentSuffix)
}

// listSegments returns the segment files in dir, oldest first, and removes
// a reservation's temporary file a crash left behind.
func listSegments(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type named struct {
		first uint64
		path  string
	}
	var found []named
	for _, de := range des {
		name := de.Name()
		if name == reserveName+".tmp" {
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		num, hasPrefix := strings.CutPrefix(name, segmentPrefix)
		num, hasSuffix := strings.CutSuffix(num, segmentSuffix)
		if !hasPrefix || !hasSuffix || !de.Type().IsRegular() {
			continue
		}
		first, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			continue
		}
		found = append(found, named{first, filepath.Join(dir, name)})
	}
	slices.SortFunc(found, func(a, b named) int { return cmpUint(a.first, b.first) })
	paths := make([]string, len(found))
	for i, n := range found {
		paths[i] = n.path
	}
	return paths, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// segmentRead is what readSegment found in one segment.
type segmentRead struct {
	events  []Event
	whole   int64 // bytes of whole lines: the file is cut here when torn > 0
	torn    int   // bytes after the last newline: a write cut short by a crash
	skipped int   // whole lines that are not an event, or whose seq is not above the one before
}

// readSegment reads the events of one segment whose seqs are above after.
// It never fails on content: lines it cannot use are counted, and the torn
// tail is reported so the caller can cut it off.
func readSegment(r io.Reader, after uint64) (segmentRead, error) {
	var res segmentRead
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: gather it whole.
			long := bytes.Clone(line)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				res.torn = len(line)
				return res, nil
			}
			return res, err
		}
		res.whole += int64(len(line))
		var e Event
		if json.Unmarshal(line, &e) != nil || e.Seq <= after {
			res.skipped++
			continue
		}
		after = e.Seq
		res.events = append(res.events, e)
	}
}

// readReservation returns the reservation, or 0 when there is none.
func readReservation(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%s holds %q, not a sequence number: it says which seqs may have been handed out, so the journal cannot continue safely without it; remove the directory %s to start the journal over (clients then see seqs restart)",
			path, truncate(string(b), 40), filepath.Dir(path))
	}
	return n, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// openStore reads the journal in dir: it cuts torn tails, skips lines that
// are not events, and deletes what the trimming rule no longer keeps. It
// returns the last keep events and the next seq to hand out.
func openStore(dir string, keep int, log *slog.Logger) (*store, []Event, uint64, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, 0, fmt.Errorf("create the event journal directory: %w", err)
	}
	s := &store{dir: dir, keep: keep, segCap: max(1, (keep+segmentsPerSize-1)/segmentsPerSize)}
	reservePath := filepath.Join(dir, reserveName)
	reserved, err := readReservation(reservePath)
	if err != nil {
		return nil, nil, 0, err
	}
	paths, err := listSegments(dir)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("read the event journal directory: %w", err)
	}
	var (
		kept []Event
		last uint64
	)
	for _, p := range paths {
		res, err := readSegmentFile(p, last, log)
		if err != nil {
			return nil, nil, 0, err
		}
		if len(res.events) > 0 {
			last = res.events[len(res.events)-1].Seq
		}
		s.segs = append(s.segs, segment{path: p, count: len(res.events)})
		s.size = res.whole
		kept = append(kept, res.events...)
		if len(kept) > 2*keep { // bound memory when Size shrank since the last run
			kept = slices.Delete(kept, 0, len(kept)-keep)
		}
	}
	if last > 0 && reserved == 0 {
		return nil, nil, 0, fmt.Errorf("%s is missing while the journal holds events up to seq %d: it says which seqs may have been handed out, so the journal cannot continue safely without it; remove the directory %s to start the journal over (clients then see seqs restart)",
			reservePath, last, dir)
	}
	next := max(reserved, last+1)
	s.reserved = reserved // the caller reserves ahead of next
	if n := len(s.segs); n > 0 && s.segs[n-1].count < s.segCap {
		f, err := os.OpenFile(s.segs[n-1].path, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("open the event journal: %w", err)
		}
		s.f = f
	}
	if err := s.trim(); err != nil {
		log.Warn("event journal: trim", "err", err)
	}
	if len(kept) > keep {
		kept = kept[len(kept)-keep:]
	}
	return s, kept, next, nil
}

// readSegmentFile reads one segment, cutting off a torn last line.
func readSegmentFile(path string, after uint64, log *slog.Logger) (segmentRead, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return segmentRead{}, fmt.Errorf("open the event journal: %w", err)
	}
	defer f.Close()
	res, err := readSegment(f, after)
	if err != nil {
		return res, fmt.Errorf("read %s: %w", path, err)
	}
	if res.skipped > 0 {
		log.Warn("event journal: skipped lines that are not events in order", "file", path, "lines", res.skipped)
	}
	if res.torn > 0 {
		if err := f.Truncate(res.whole); err != nil {
			return res, fmt.Errorf("cut the torn last line of %s: %w", path, err)
		}
		log.Warn("event journal: cut a torn last line (a write interrupted by a crash)", "file", path, "offset", res.whole, "bytes", res.torn)
	}
	return res, nil
}

// append writes one event's line. On failure the file is cut back to its
// whole lines, so a later write does not glue onto a fragment.
func (s *store) append(seq uint64, line []byte) error {
	var synced error // a sync that failed: reported, but the line is still written
	if s.f == nil || s.segs[len(s.segs)-1].count >= s.segCap {
		var err error
		if synced, err = s.rotate(seq); err != nil {
			return err
		}
	}
	n, err := s.f.Write(line)
	if err != nil {
		if n > 0 && s.f.Truncate(s.size) != nil {
			s.f.Close() // the fragment stays: a new segment begins with the next write
			s.f = nil
		}
		return fmt.Errorf("write the event journal: %w", err)
	}
	s.size += int64(n)
	s.segs[len(s.segs)-1].count++
	return errors.Join(synced, s.trim())
}

// rotate closes the current segment, durably, and starts one named after
// seq. A sync that fails (of the old segment, of the directory) is
// returned as synced: the new segment is open all the same, so the event
// that asked for it is still written.
func (s *store) rotate(seq uint64) (synced, err error) {
	if s.f != nil {
		if err := s.f.Sync(); err != nil {
			synced = fmt.Errorf("sync the event journal: %w", err)
		}
		s.f.Close()
		s.f = nil
	}
	p := filepath.Join(s.dir, segmentName(seq))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return synced, fmt.Errorf("start an event journal segment: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return synced, fmt.Errorf("start an event journal segment: %w", err)
	}
	s.f, s.size = f, st.Size()
	s.segs = append(s.segs, segment{path: p})
	if err := syncDir(s.dir); err != nil {
		synced = errors.Join(synced, fmt.Errorf("sync the event journal's directory: %w", err))
	}
	return synced, nil
}

// trim deletes the oldest segments while the others hold keep events.
func (s *store) trim() error {
	total := 0
	for _, sg := range s.segs {
		total += sg.count
	}
	for len(s.segs) > 1 && total-s.segs[0].count >= s.keep {
		if err := os.Remove(s.segs[0].path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("trim the event journal: %w", err)
		}
		total -= s.segs[0].count
		s.segs = slices.Delete(s.segs, 0, 1)
	}
	return nil
}

// reserve records durably that seqs below next may have been handed out:
// temporary file, fsync, rename, fsync of the directory.
func (s *store) reserve(next uint64) error {
	if err := writeFileSync(filepath.Join(s.dir, reserveName), strconv.AppendUint(nil, next, 10)); err != nil {
		return fmt.Errorf("reserve event seqs: %w", err)
	}
	s.reserved = next
	return nil
}

// close makes the last segment durable and sets the reservation to next
// exactly, so a clean restart continues without a jump.
func (s *store) close(next uint64) error {
	var errs []error
	if s.f != nil {
		if err := s.f.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("sync the event journal: %w", err))
		}
		if err := s.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close the event journal: %w", err))
		}
		s.f = nil
	}
	if err := s.reserve(next); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
