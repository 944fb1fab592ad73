package sandbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func testRecord(id string) record {
	code := 4
	return record{Spec: Spec{ID: id, Labels: map[string]string{"a": "b"}, TTL: time.Minute}, State: StateReady,
		CreatedAt: time.Unix(100, 5).UTC(), LastExitCode: &code}
}

// TestRecordRoundTripInPlace: a record file keeps its size and the newest
// record across writes, the slots taken in turn, nothing left beside it.
func TestRecordRoundTripInPlace(t *testing.T) {
	dir := t.TempDir()
	store := recordStore{dir: dir}
	rec := testRecord("r")
	if err := store.write(rec); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, recordFile))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		rec.Error = fmt.Sprintf("write %d", i)
		if err := store.write(rec); err != nil {
			t.Fatal(err)
		}
		got, again, err := readRecord(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got.Error != rec.Error || got.Spec.TTL != time.Minute || *got.LastExitCode != 4 || !got.CreatedAt.Equal(rec.CreatedAt) {
			t.Fatalf("read back %+v, want %+v", got, rec)
		}
		if again != store {
			t.Fatalf("store read back %+v, want %+v", again, store)
		}
	}
	after, err := os.Stat(filepath.Join(dir, recordFile))
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() != fi.Size() || !os.SameFile(fi, after) {
		t.Errorf("the record file was replaced or resized: %d bytes, then %d", fi.Size(), after.Size())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left beside the record: %v", entries)
	}
}

// TestRecordTornWrite: an agent killed in the middle of a write leaves the
// slot it wrote damaged; the record before it is read back.
func TestRecordTornWrite(t *testing.T) {
	dir := t.TempDir()
	store := recordStore{dir: dir}
	rec := testRecord("t")
	rec.Error = "older"
	if err := store.write(rec); err != nil {
		t.Fatal(err)
	}
	rec.Error = "newer"
	if err := store.write(rec); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, recordFile)
	content, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	newest := int64(store.seq%2) * store.slot
	at := bytes.Index(content[newest:], []byte("newer"))
	if at < 0 {
		t.Fatal("the newest record is not in the slot it should be in")
	}
	content[newest+int64(at)] = 'N' // a half-written record
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	got, _, err := readRecord(dir)
	if err != nil || got.Error != "older" {
		t.Fatalf("after a torn write: %+v, %v; want the older record", got, err)
	}
	for _, bad := range [][]byte{nil, []byte("{}"), make([]byte, 2*recordBlock)} {
		if err := os.WriteFile(path, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readRecord(dir); err == nil {
			t.Errorf("a record file of %d bytes was accepted", len(bad))
		}
	}
}

// TestRecordLegacyJSON: a record.json of an earlier agent is read, and the
// next write replaces it with a record file.
func TestRecordLegacyJSON(t *testing.T) {
	dir := t.TempDir()
	legacy := filepath.Join(dir, legacyRecordFile)
	if err := os.WriteFile(legacy, []byte(`{"version":1,"state":"bogus"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readRecord(dir); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("a record with an unknown state: %v, want an error naming it", err)
	}
	if err := os.WriteFile(legacy, []byte(`{"version":1,"spec":{"id":"old"},"state":"stopped","created_at":"2026-01-02T03:04:05Z"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rec, store, err := readRecord(dir)
	if err != nil || rec.Spec.ID != "old" || rec.State != StateStopped {
		t.Fatalf("legacy record: %+v, %v", rec, err)
	}
	rec.State = StateFailed
	if err := store.write(rec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(legacy); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record.json still there after the first write: %v", err)
	}
	if got, _, err := readRecord(dir); err != nil || got.State != StateFailed {
		t.Errorf("read back %+v, %v", got, err)
	}
}

// TestRecordTextBounded: the free text a record keeps is bounded, so a
// record always fits the slots made for it.
func TestRecordTextBounded(t *testing.T) {
	long := strings.Repeat("é", 1000)
	if got := recordText(long); len(got) > maxRecordText || !strings.HasSuffix(got, "...") || !strings.HasPrefix(long, strings.TrimSuffix(got, "...")) {
		t.Errorf("recordText: %d bytes, %q...", len(got), got[:8])
	}
	cmd := []string{"sh", "-c", strings.Repeat("x", 4000), "a", "b"}
	sum := runSummary(cmd)
	if n := len(strings.Join(sum, "")); n > maxRecordText+len("...") || sum[0] != "sh" || sum[len(sum)-1] != "..." {
		t.Errorf("runSummary: %q (%d bytes)", sum, n)
	}
	// Many empty arguments, and arguments that JSON escapes, are counted
	// as they are written.
	if sum := runSummary(append([]string{"sh"}, make([]string, 100000)...)); len(sum) > maxSummaryArgs+1 {
		t.Errorf("runSummary kept %d empty arguments", len(sum))
	}
	escaped := runSummary(slices.Repeat([]string{strings.Repeat("<", 100)}, 50))
	enc, _ := json.MarshalIndent(escaped, "", "  ")
	if len(enc) > maxRecordText+64 {
		t.Errorf("runSummary of escaped arguments: %d bytes of JSON", len(enc))
	}
	dir := t.TempDir()
	store := recordStore{dir: dir}
	rec := testRecord("big")
	if err := store.write(rec); err != nil {
		t.Fatal(err)
	}
	slot := store.slot
	rec.Error = recordText(strings.Repeat("\x01", 10000)) // escaped six times over in JSON
	rec.Run = &runRecord{Cmd: runSummary(slices.Repeat([]string{strings.Repeat("\x02", 10000)}, 100)), StartedAt: time.Now()}
	rec.ReadyAt, rec.LastExitedAt = time.Now(), time.Now()
	if err := store.write(rec); err != nil {
		t.Fatal(err)
	}
	if store.slot != slot {
		t.Errorf("the record outgrew its slots (%d bytes, then %d)", slot, store.slot)
	}
}
