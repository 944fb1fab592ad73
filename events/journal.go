// Package events is the agent's event journal: every event gets a seq that
// only grows, across restarts too; the last Size events are kept on disk and
// in memory; subscribers replay from a seq and then follow live, and one
// that falls behind catches up from the journal instead of being cut off.
//
// # Seqs
//
// Seqs start at 1 and increase with every event; they are not necessarily
// contiguous: after a crash or a power loss the journal continues above
// every seq it may have handed out, which skips some.
//
// # Durability
//
// Each Append is one write(2) of the event's line into the current segment
// file before any subscriber can see the event, so an event a client has
// seen survives the agent being killed or restarting. Appends are not
// fsynced one by one (an fsync costs milliseconds on a VM's disk, a write a
// few microseconds): a power loss or a kernel crash may lose the events the
// kernel had not yet written back. Seqs never repeat even then: the
// journal fsyncs a reservation ("every seq below X may have been handed
// out", in a file of its own: temporary file, fsync, rename, fsync of the
// directory) once every 4096 events, ahead of use, and a restart continues
// at X. A clean Close fsyncs the segment and sets the reservation to the
// exact next seq, so a clean restart skips nothing. A segment is fsynced
// when the journal moves on to the next one.
//
// A failed write (a full disk, say) is logged once per streak of failures
// and counted in arcbox_agent_event_journal_write_errors_total; the event
// is still served from memory and Append never fails, so a sandbox
// transition never fails because of the journal. Every Append retries a
// reservation that could not be written; until one is, a crash may make a
// restart repeat seqs handed out meanwhile.
//
// # Files
//
// The directory holds NDJSON segments, events-<first seq>.ndjson, each line
// exactly what subscribers receive, and the reservation, next-seq. A
// segment holds Size/4 events; whole segments are deleted while the newer
// ones hold Size events, so between Size and 1.25*Size events are on disk.
// Open cuts a torn last line (a write a crash interrupted), skips lines that
// are not events in seq order, and loads the last Size events into memory.
// A reservation file that is missing while events are on disk, or is not a
// number, fails Open with an error naming it: without it the journal cannot
// know which seqs were handed out.
package events

import (
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultSize is the number of events a journal keeps when Config.Size is 0.
const DefaultSize = 10000

// MaxSize bounds Config.Size: the journal keeps that many events in memory.
const MaxSize = 10_000_000

// Config configures a Journal.
type Config struct {
	// Dir is where the journal lives, created 0700 when missing. Empty
	// keeps the journal in memory only (for tests of other packages): seqs
	// then start at 1 with every Open.
	Dir string
	// Size is how many events are kept; 0 means DefaultSize.
	Size int
	// Logger gets the journal's warnings; nil discards them.
	Logger *slog.Logger
	// Registerer gets the journal's metrics; nil: no metrics.
	Registerer prometheus.Registerer
	// Now stamps events appended without a time; nil means time.Now.
	Now func() time.Time
}

// Journal assigns seqs, keeps the last events, and serves subscriptions.
// Its methods are safe for concurrent use.
type Journal struct {
	size    int
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics

	// wmu serializes Append and Close: seq assignment and the file.
	wmu       sync.Mutex
	store     *store // nil: memory only
	next      uint64 // the seq the next Append assigns
	failing   bool   // in a streak of disk failures, logged when it began
	closedPub bool   // Close began: appends are dropped

	// mu guards what subscribers read.
	mu     sync.RWMutex
	ring   []entry // the kept events; event number n (counting from Open) is at n % size
	total  uint64  // events put in the ring since Open
	last   uint64  // the newest seq assigned, or that may have been (after a crash)
	closed bool
	// wake is closed and replaced by an Append when a subscriber waits on
	// it (waiting), and closed for good by Close.
	wake    chan struct{}
	waiting atomic.Bool
}

// entry is a kept event and its encoded line, shared by every subscriber.
type entry struct {
	ev   Event
	line []byte
}

// Open opens the journal in cfg.Dir (see the package doc for what it
// repairs), or a memory-only one when cfg.Dir is empty.
func Open(cfg Config) (*Journal, error) {
	size := cfg.Size
	if size == 0 {
		size = DefaultSize
	}
	if size < 1 || size > MaxSize {
		return nil, fmt.Errorf("event journal: Size %d is out of range: it must be between 1 and %d (0 means %d)", cfg.Size, MaxSize, DefaultSize)
	}
	j := &Journal{
		size:    size,
		log:     cfg.Logger,
		now:     cfg.Now,
		metrics: newMetrics(),
		next:    1,
		wake:    make(chan struct{}),
	}
	if j.log == nil {
		j.log = slog.New(slog.DiscardHandler)
	}
	if j.now == nil {
		j.now = time.Now
	}
	var loaded []Event
	if cfg.Dir != "" {
		s, evs, next, err := openStore(cfg.Dir, size, j.log)
		if err != nil {
			return nil, fmt.Errorf("event journal: %w", err)
		}
		j.store, loaded, j.next = s, evs, next
		// Reserve ahead at once: this run may hand out seqs up to here. On
		// failure (a read-only or full disk) the journal still serves from
		// memory, and every Append tries again.
		j.diskDone(s.reserve(next+reserveBlock), next)
	}
	j.ring = make([]entry, 0, min(size, 1024))
	for i := range loaded {
		e := &loaded[i]
		j.put(entry{ev: *e, line: encodeLine(e)})
	}
	j.last = j.next - 1
	if cfg.Registerer != nil {
		if err := j.metrics.register(cfg.Registerer); err != nil {
			if j.store != nil {
				_ = j.store.close(j.next)
			}
			return nil, fmt.Errorf("event journal: %w", err)
		}
	}
	j.metrics.lastSeq.Set(float64(j.last))
	j.metrics.oldestSeq.Set(float64(j.oldestLocked()))
	return j, nil
}

// encodeLine returns e's wire form and a newline, in a slice of its own.
func encodeLine(e *Event) []byte {
	b := e.appendJSON(make([]byte, 0, e.encodedLen()))
	b = append(b, '\n')
	return b[:len(b):len(b)]
}

// put adds en to the ring; mu is held (or the journal not yet shared).
func (j *Journal) put(en entry) {
	if len(j.ring) < j.size {
		j.ring = append(j.ring, en)
	} else {
		j.ring[j.total%uint64(j.size)] = en
	}
	j.total++
}

// Append assigns e the next seq (and the current time when e.Time is zero),
// writes it to the journal's file, and only then shows it to subscribers.
// It never waits for a subscriber, and never fails: a disk failure is
// logged and counted, and the event is still served from memory. It
// returns the event as stored. Attributes are copied. An event appended
// after Close is dropped and returned with Seq 0.
func (j *Journal) Append(e Event) Event {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	if j.closedPub {
		j.log.Warn("event journal: event appended after Close, dropped", "action", e.Action, "sandbox_id", e.SandboxID)
		e.Seq = 0
		return e
	}
	e.Seq = j.next
	j.next++
	if e.Time.IsZero() {
		e.Time = j.now()
	}
	if len(e.Attributes) > 0 {
		e.Attributes = maps.Clone(e.Attributes)
	} else {
		e.Attributes = nil
	}
	line := encodeLine(&e)
	if j.store != nil {
		j.persist(e.Seq, line)
	}

	j.mu.Lock()
	j.put(entry{ev: e, line: line})
	j.last = e.Seq
	oldest := j.oldestLocked()
	if j.waiting.Swap(false) {
		close(j.wake)
		j.wake = make(chan struct{})
	}
	j.mu.Unlock()

	j.metrics.appends.Inc()
	j.metrics.lastSeq.Set(float64(e.Seq))
	j.metrics.oldestSeq.Set(float64(oldest))
	return e
}

// persist reserves seqs when the reservation is used up, then writes line.
// wmu is held.
func (j *Journal) persist(seq uint64, line []byte) {
	var err error
	if seq >= j.store.reserved {
		err = j.store.reserve(seq + reserveBlock)
	}
	if werr := j.store.append(seq, line); err == nil {
		err = werr
	}
	j.diskDone(err, seq)
}

// diskDone counts and logs a failure of the disk, once per streak, and the
// end of a streak. wmu is held (or the journal not yet shared).
func (j *Journal) diskDone(err error, seq uint64) {
	switch {
	case err != nil:
		j.metrics.writeErrors.Inc()
		if !j.failing {
			j.failing = true
			j.log.Error("event journal: writing to disk failed; events are served from memory until it works again", "seq", seq, "err", err)
		}
	case j.failing:
		j.failing = false
		j.log.Info("event journal: writing to disk works again", "seq", seq)
	}
}

// Bounds returns the seq of the oldest event kept and the newest seq
// assigned (after a crash: the newest that may have been). A journal that
// keeps nothing answers oldest = last+1, the least seq the next event will
// have; a new one answers (1, 0).
func (j *Journal) Bounds() (oldest, last uint64) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.oldestLocked(), j.last
}

// base is the number (counting from Open) of the oldest event kept; mu is
// held.
func (j *Journal) base() uint64 {
	return j.total - uint64(len(j.ring))
}

func (j *Journal) at(n uint64) *entry {
	return &j.ring[n%uint64(j.size)]
}

func (j *Journal) oldestLocked() uint64 {
	if len(j.ring) == 0 {
		return j.last + 1
	}
	return j.at(j.base()).ev.Seq
}

// Close ends every subscription (Next answers ErrClosed), makes the file
// durable, and records the exact next seq so a restart continues without
// a gap. Later calls do nothing.
func (j *Journal) Close() error {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	if j.closedPub {
		return nil
	}
	j.closedPub = true
	j.mu.Lock()
	j.closed = true
	close(j.wake)
	j.mu.Unlock()
	if j.store == nil {
		return nil
	}
	if err := j.store.close(j.next); err != nil {
		return fmt.Errorf("event journal: %w", err)
	}
	return nil
}
