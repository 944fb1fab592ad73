package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
	"unicode/utf8"
)

// recordVersion is the version of a record's JSON layout.
const recordVersion = 1

// recordFile holds a sandbox's record; legacyRecordFile is where an agent
// before the two-slot layout kept it (plain JSON, replaced by rename).
const (
	recordFile       = "record"
	legacyRecordFile = "record.json"
)

// IsRecordFile reports whether name, in a sandbox's directory, is the
// Manager's: its record. Backend.Destroy leaves it.
func IsRecordFile(name string) bool { return name == recordFile || name == legacyRecordFile }

// record is what the agent keeps of a sandbox across restarts, in
// StateDir/sandboxes/<id>/record (see recordStore).
type record struct {
	Version      int       `json:"version"`
	Spec         Spec      `json:"spec"`
	State        State     `json:"state"`
	CreatedAt    time.Time `json:"created_at"`
	ReadyAt      time.Time `json:"ready_at,omitzero"`
	LastExitedAt time.Time `json:"last_exited_at,omitzero"`
	LastExitCode *int      `json:"last_exit_code,omitempty"`
	Error        string    `json:"error,omitempty"`
	// Runs are the runs in progress; Run is where an agent before runs
	// with ids kept its one run in progress (read, never written).
	Runs []runRecord `json:"runs,omitempty"`
	Run  *runRecord  `json:"run,omitempty"`
	// IPAddress and Gateway are a bridged sandbox's address, held from
	// its creation to its removal, and the bridge's.
	IPAddress string `json:"ip_address,omitempty"`
	Gateway   string `json:"gateway,omitempty"`
	// Restored names the snapshot the sandbox was restored from, if it was.
	Restored *restoredFrom `json:"restored_from,omitempty"`
	// IDMap is the range of host ids the sandbox's user namespace maps,
	// held from its creation to its removal; nil without one (created
	// with Security.HostUsers, or by an agent without user namespaces).
	IDMap *IDMap `json:"id_map,omitempty"`
}

// restoredFrom is the snapshot a sandbox was made from.
type restoredFrom struct {
	SnapshotID string `json:"snapshot_id"`
}

// runRecord is a run in progress.
type runRecord struct {
	ID        string    `json:"id,omitempty"` // empty in an earlier agent's Run
	Cmd       []string  `json:"cmd"`
	StartedAt time.Time `json:"started_at"`
	Detached  bool      `json:"detached,omitempty"`
}

func (r record) clone() record {
	c := r
	if r.LastExitCode != nil {
		code := *r.LastExitCode
		c.LastExitCode = &code
	}
	if r.Restored != nil {
		from := *r.Restored
		c.Restored = &from
	}
	if r.Runs != nil {
		c.Runs = make([]runRecord, len(r.Runs))
		for i, run := range r.Runs {
			run.Cmd = slices.Clone(run.Cmd)
			c.Runs[i] = run
		}
	}
	if r.Run != nil {
		run := *r.Run
		run.Cmd = slices.Clone(r.Run.Cmd)
		c.Run = &run
	}
	return c
}

// A record file has two slots of the same size, written in turn, so that
// the record of a sandbox can be rewritten in place for the whole of its
// life: the file's blocks are all written when the sandbox is admitted,
// and a later write overwrites them, which needs no new space on tmpfs
// (where the state dir of a VM lives), ext4 or xfs, and none on btrfs for
// a file marked no-copy-on-write. So a full state dir can refuse a create
// (507), but can never keep a sandbox's later states (ready, stopped,
// failed) from its record: the record never lies for lack of space.
//
// Each slot is a header line and the record's JSON:
//
//	arcbox-record <seq, 16 hex digits> <length, 8 hex> <crc32c, 8 hex>\n{...}
//
// Record number seq is written in slot seq%2, so a write goes to the slot
// the newest record is not in, and an agent killed half way through a
// write leaves the newest whole record in the other; the reader takes the
// valid slot with the highest sequence number. The checksum covers the
// header before it and the JSON, so a damaged sequence number cannot make
// an old record win. Records
// are not fsynced: a record only has to survive the agent, not the machine,
// since no sandbox survives a reboot (the next agent finds the init gone
// and fails the sandbox, whatever the record says), and two fsyncs per run
// were a tenth of a `true` run's time.

const (
	recordMagic     = "arcbox-record"
	recordHeaderLen = len(recordMagic) + 1 + 16 + 1 + 8 + 1 + 8 + 1
	// recordHeadroom is how much a record may grow past its first write:
	// ready_at, the exit fields, an error (recordText: 512 bytes, six
	// times that escaped) and a run (runSummary: 512 bytes of JSON).
	recordHeadroom = 8 << 10
	recordBlock    = 4 << 10
	// maxRecordSeq bounds the sequence numbers, so they never wrap: the
	// write that would reach it makes a new file, starting again at 1.
	maxRecordSeq = 1 << 62
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// recordStore is where a sandbox's record is written: its file, the slot
// size and the sequence number of the newest record. The zero value has
// no file yet (a new sandbox, or one an earlier agent recorded as
// record.json): the first write makes it. Not safe for concurrent use
// (the sandbox's persistMu serializes it).
type recordStore struct {
	dir  string
	slot int64
	seq  uint64
}

// write stores rec. An error wraps ErrNoSpace when the state dir was
// full, which can happen only while the file is made (or grown, for a
// record that no longer fits: a bug, since its fields are bounded).
func (s *recordStore) write(rec record) error {
	rec.Version = recordVersion
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	if s.slot == 0 || int64(recordHeaderLen+len(data)) > s.slot || s.seq+1 >= maxRecordSeq {
		return s.create(data)
	}
	f, err := os.OpenFile(filepath.Join(s.dir, recordFile), os.O_WRONLY, 0)
	if err != nil {
		return storageErr(err)
	}
	defer f.Close()
	seq := s.seq + 1
	if _, err := f.WriteAt(slotBytes(seq, data), int64(seq%2)*s.slot); err != nil {
		return storageErr(err)
	}
	s.seq = seq
	return nil
}

// create makes a new record file with data in its first slot and every
// block of both slots written, a temporary file renamed into place.
func (s *recordStore) create(data []byte) (err error) {
	slot := int64(recordHeaderLen+len(data)+recordHeadroom+recordBlock-1) / recordBlock * recordBlock
	seq := s.seq + 1
	if seq >= maxRecordSeq {
		seq = 1
	}
	buf := make([]byte, 2*slot)
	copy(buf[int64(seq%2)*slot:], slotBytes(seq, data))
	f, err := os.CreateTemp(s.dir, "."+recordFile+".tmp-*")
	if err != nil {
		return storageErr(err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	setNoCOW(f) // before any data: btrfs takes the flag only on an empty file
	if _, err = f.Write(buf); err != nil {
		return storageErr(err)
	}
	if err = f.Close(); err != nil {
		return storageErr(err)
	}
	if err = os.Rename(f.Name(), filepath.Join(s.dir, recordFile)); err != nil {
		return storageErr(err)
	}
	s.slot, s.seq = slot, seq
	// Made from a record.json of an earlier agent: that one is stale now.
	// Should it stay, it does no harm: it is read only without a record.
	_ = os.Remove(filepath.Join(s.dir, legacyRecordFile))
	return nil
}

// slotBytes is a slot's content: the header and the JSON.
func slotBytes(seq uint64, data []byte) []byte {
	b := make([]byte, 0, recordHeaderLen+len(data))
	b = fmt.Appendf(b, "%s %016x %08x ", recordMagic, seq, len(data))
	b = fmt.Appendf(b, "%08x\n", slotSum(b, data))
	return append(b, data...)
}

// slotSum is the checksum of a slot: its header up to the checksum, and
// its JSON.
func slotSum(head, data []byte) uint32 {
	return crc32.Update(crc32.Checksum(head, crc32c), crc32c, data)
}

// readRecord loads the record in dir, and the store that goes on writing
// it.
func readRecord(dir string) (record, recordStore, error) {
	store := recordStore{dir: dir}
	path := filepath.Join(dir, recordFile)
	content, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		// An earlier agent's record.json: read it; the next write makes
		// the two-slot file.
		legacy := filepath.Join(dir, legacyRecordFile)
		if content, err = os.ReadFile(legacy); err != nil {
			return record{}, store, err
		}
		rec, err := decodeRecord(legacy, content)
		return rec, store, err
	}
	if err != nil {
		return record{}, store, err
	}
	data, seq, slot, err := newestSlot(content)
	if err != nil {
		return record{}, store, fmt.Errorf("%s: %w", path, err)
	}
	rec, err := decodeRecord(path, data)
	if err != nil {
		return record{}, store, err
	}
	store.slot, store.seq = slot, seq
	return rec, store, nil
}

// newestSlot finds the valid slot with the highest sequence number.
func newestSlot(content []byte) (data []byte, seq uint64, slot int64, err error) {
	if len(content) == 0 || len(content)%(2*recordBlock) != 0 {
		return nil, 0, 0, fmt.Errorf("%d bytes long: not a record file (two slots of a multiple of %d bytes)", len(content), recordBlock)
	}
	slot = int64(len(content) / 2)
	found := false
	for i := range int64(2) {
		d, s, ok := parseSlot(content[i*slot:(i+1)*slot], uint64(i))
		if ok && (!found || s > seq) {
			data, seq, found = d, s, true
		}
	}
	if !found {
		return nil, 0, 0, errors.New("no whole record in either slot")
	}
	return data, seq, slot, nil
}

// parseSlot checks the header and checksum of slot number index and
// returns its JSON.
func parseSlot(b []byte, index uint64) (data []byte, seq uint64, ok bool) {
	if len(b) < recordHeaderLen {
		return nil, 0, false
	}
	var n, sum uint32
	k, err := fmt.Sscanf(string(b[:recordHeaderLen]), recordMagic+" %016x %08x %08x\n", &seq, &n, &sum)
	if err != nil || k != 3 || b[recordHeaderLen-1] != '\n' || int64(n) > int64(len(b)-recordHeaderLen) ||
		seq == 0 || seq >= maxRecordSeq || seq%2 != index {
		return nil, 0, false
	}
	data = b[recordHeaderLen : recordHeaderLen+int(n)]
	if slotSum(b[:recordHeaderLen-len("00000000\n")], data) != sum {
		return nil, 0, false
	}
	return data, seq, true
}

// decodeRecord decodes and checks a record's JSON; path is for messages.
func decodeRecord(path string, data []byte) (record, error) {
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, fmt.Errorf("decode %s: %w", path, err)
	}
	if rec.Version != recordVersion {
		return rec, fmt.Errorf("%s: record version %d, want %d", path, rec.Version, recordVersion)
	}
	if !rec.State.Valid() {
		return rec, fmt.Errorf("%s: unknown state %q", path, rec.State)
	}
	return rec, nil
}

// maxRecordText bounds the free text a record keeps (an error, a run's
// command), so that a record always fits its slots.
const maxRecordText = 512

// recordText shortens s to maxRecordText bytes, on a rune boundary.
func recordText(s string) string {
	if len(s) <= maxRecordText {
		return s
	}
	cut := maxRecordText - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// runSummary is a run's command as a record keeps it: at most
// maxSummaryArgs arguments, each shortened, in at most maxRecordText
// bytes of JSON (escapes and indentation counted), "..." for the rest.
func runSummary(cmd []string) []string {
	var out []string
	total := 0
	for i, a := range cmd {
		a = recordText(a)
		enc, _ := json.Marshal(a)
		cost := len(enc) + summaryArgOverhead
		if i == maxSummaryArgs || total+cost > maxRecordText {
			return append(out, "...")
		}
		out = append(out, a)
		total += cost
	}
	return out
}

const (
	// maxSummaryArgs bounds the arguments runSummary keeps.
	maxSummaryArgs = 32
	// summaryArgOverhead is what an argument costs in an indented JSON
	// list besides its own encoding: the indentation, a comma, a newline.
	summaryArgOverhead = 8
)

// noSpace marks err ErrNoSpace when it comes of a full filesystem (ENOSPC,
// or a quota), and leaves it as it is otherwise.
func noSpace(err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return Classify(ErrNoSpace, err)
	}
	return err
}

// storageErr classes an error of the state dir: no space (ENOSPC, or a
// quota) is ErrNoSpace, anything else ErrUnavailable.
func storageErr(err error) error {
	if err = noSpace(err); errors.Is(err, ErrNoSpace) || errors.Is(err, ErrUnavailable) {
		return err
	}
	return Classify(ErrUnavailable, err)
}

// persist writes sb's record as it is now. Writes are ordered, so the last
// state always wins on disk.
func (m *Manager) persist(sb *sandbox) error {
	sb.persistMu.Lock()
	defer sb.persistMu.Unlock()
	m.mu.Lock()
	if sb.removed {
		m.mu.Unlock()
		return nil
	}
	rec := sb.rec.clone()
	m.mu.Unlock()
	return sb.store.write(rec)
}

func (m *Manager) persistLogged(sb *sandbox) {
	if err := m.persist(sb); err != nil {
		m.log.Error("write sandbox record", "id", sb.id, "err", err)
	}
}
