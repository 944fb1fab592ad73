package sandbox

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// recordSeeds are record JSON as agents wrote it, and edge cases.
var recordSeeds = []string{
	`{"version":1,"spec":{"id":"old"},"state":"stopped","created_at":"2026-01-02T03:04:05Z"}`,
	`{"version":1,"spec":{"id":"web-1","labels":{"app":"web","tier":""},"image":"127.0.0.1:5000/busybox:latest",` +
		`"limits":{"vcpus":2,"memory_mib":512},"cmd":["sh","-c","echo hello; echo err >&2"],"env":{"A":"b"},` +
		`"working_dir":"/work","user":"1000:1000","mounts":[{"source":"/srv","target":"/mnt/srv","readonly":true}],` +
		`"network_mode":"bridge","ttl":3600000000000},"state":"running","created_at":"2026-01-02T03:04:05.123456789Z",` +
		`"ready_at":"2026-01-02T03:04:06+01:00","last_exited_at":"2026-01-02T03:05:00Z","last_exit_code":137,` +
		`"error":"last run lost","run":{"cmd":["sleep","1"],"started_at":"2026-01-02T03:05:01Z"},` +
		`"ip_address":"172.20.0.2","gateway":"172.20.0.1","restored_from":{"snapshot_id":"snap-0123456789abcdef"}}`,
	`{"version":1,"spec":{"id":"s"},"state":"starting","created_at":"2026-01-02T03:04:05Z","restored_from":{"snapshot_id":""}}`,
	`{"version":1,"spec":{"id":"s","labels":{},"cmd":[],"env":{},"mounts":[]},"state":"ready","created_at":"0001-01-01T00:00:00Z","ready_at":"0001-01-01T00:00:00Z"}`,
	`{"version":1,"spec":{"id":"s","ttl":-1},"state":"failed","created_at":"9999-12-31T23:59:59.999999999-23:59","run":{"cmd":null,"started_at":"0000-01-01T00:00:00+23:59"}}`,
	`{"version":1,"spec":{"id":"s","ttl":9223372036854775807},"state":"ready","created_at":"2026-01-02T03:04:05Z","last_exit_code":-1}`,
	`{"version":1,"spec":{"id":"\u00e9\ud800","labels":{"\u0000":"\n"}},"state":"ready","created_at":"2026-01-02T03:04:05Z","error":"\xff"}`,
	`{"version":1,"state":"ready","state":"bogus"}`,          // a duplicate key
	`{"Version":1,"STATE":"ready","Spec":{"ID":"caseless"}}`, // keys in other cases
	`{"version":1,"state":"ready","future_field":{"x":[1]}}`, // a newer agent's field
	`{"version":2,"state":"ready"}`,
	`{"version":1,"state":"Ready"}`,
	`{"version":1,"state":"ready","created_at":"yesterday"}`,
	`{"version":1,"state":"ready","last_exit_code":1.5}`,
	`{"version":1,"spec":{"id":"s"},"state":"ready","created_at":"2026-01-02T03:04:05Z"`, // torn
	`null`, `[]`, ``,
}

// FuzzRecordJSON loads arbitrary JSON as a sandbox's record, the way the
// manager does at startup: as an earlier agent's record.json, and in a
// whole slot of a record file. It checks that both agree, that what is
// rejected is rejected with an error naming the file, and that an accepted
// record writes back and reads back to the same record, and writes the
// same bytes again.
func FuzzRecordJSON(f *testing.F) {
	for _, s := range recordSeeds {
		f.Add([]byte(s))
	}
	dir := f.TempDir() // one for every input: they run one at a time in each process
	f.Fuzz(func(t *testing.T, data []byte) {
		clearRecordDir(t, dir)
		legacy := filepath.Join(dir, legacyRecordFile)
		if err := os.WriteFile(legacy, data, 0o600); err != nil {
			t.Fatal(err)
		}
		rec, _, err := readRecord(dir)
		if err != nil && !strings.Contains(err.Error(), legacy) {
			t.Fatalf("error %q does not name %s", err, legacy)
		}

		clearRecordDir(t, dir)
		path := filepath.Join(dir, recordFile)
		if err := os.WriteFile(path, recordFileOf(1, data), 0o600); err != nil {
			t.Fatal(err)
		}
		inSlot, store, slotErr := readRecord(dir)
		if (err == nil) != (slotErr == nil) {
			t.Fatalf("record.json: %v; in a record file: %v", err, slotErr)
		}
		if err != nil {
			if !strings.Contains(slotErr.Error(), path) {
				t.Fatalf("error %q does not name %s", slotErr, path)
			}
			return
		}
		if !reflect.DeepEqual(canonicalRecord(inSlot), canonicalRecord(rec)) || store.seq != 1 {
			t.Fatalf("record.json gave %+v; the record file gave %+v (seq %d)", rec, inSlot, store.seq)
		}
		checkRecordRewrite(t, dir, store, rec)
	})
}

// FuzzRecordFile loads arbitrary bytes as a sandbox's record file, seeded
// with files written by recordStore, torn and whole. It checks that what
// is rejected is rejected with an error naming the file, and that the
// store of an accepted file goes on writing it: the record written next is
// the one read back.
func FuzzRecordFile(f *testing.F) {
	seedDir := f.TempDir()
	store := recordStore{dir: seedDir}
	rec := testRecord("seed")
	for i, msg := range []string{"first", "second", "third, longer than the two before it"} {
		rec.Error = msg
		if err := store.write(rec); err != nil {
			f.Fatal(err)
		}
		content, err := os.ReadFile(filepath.Join(seedDir, recordFile))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(content)
		if i == 1 { // the newest slot torn half way through its JSON
			torn := append([]byte(nil), content...)
			clear(torn[int64(store.seq%2)*store.slot+int64(recordHeaderLen)+20:][:40])
			f.Add(torn)
		}
	}
	f.Add(recordFileOf(maxRecordSeq-1, []byte(recordSeeds[0])))
	f.Add(recordFileOf(1<<64-1, []byte(recordSeeds[0])))         // refused: past maxRecordSeq
	f.Add(recordFileOf(2, []byte(recordSeeds[1]))[:recordBlock]) // cut short
	f.Add(make([]byte, 2*recordBlock))
	f.Add([]byte("arcbox-record 0000000000000001 00000002 00000000\n{}"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte) {
		clearRecordDir(t, dir)
		path := filepath.Join(dir, recordFile)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		rec, store, err := readRecord(dir)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name %s", err, path)
			}
			return
		}
		if store.slot != int64(len(content)/2) {
			t.Fatalf("a file of %d bytes read as slots of %d", len(content), store.slot)
		}
		checkRecordRewrite(t, dir, store, rec)
	})
}

// FuzzSnapshotRecord loads arbitrary bytes as a snapshot's record, as the
// manager does at startup, and checks that what is rejected is rejected
// with an error naming the file, and that an accepted record, written as
// Checkpoint writes it, reads back to the same record.
func FuzzSnapshotRecord(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"id":"snap-0123456789abcdef","sandbox_id":"web-1","name":"before upgrade","labels":{"k":"v"},` +
			`"created_at":"2026-01-02T03:04:05.5Z","spec":{"id":"web-1","image":"busybox","limits":{"vcpus":1},"ttl":60000000000}}`,
		`{"version":1,"id":"snap-1","sandbox_id":"s","created_at":"2026-01-02T03:04:05+05:30","spec":{"id":"s","labels":{}}}`,
		`{"version":1,"id":"","labels":{"":""}}`,
		`{"version":0}`, `{"version":1,"created_at":1}`, `{"version":1,"spec":[]}`, `{"version":1,"id":"a"`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, snapshotRecordFile)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		rec, err := readSnapshotRecord(dir)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name %s", err, path)
			}
			return
		}
		out, err := json.MarshalIndent(rec, "", "  ") // as Checkpoint writes it
		if err != nil {
			t.Fatalf("accepted %+v, which does not encode: %v", rec, err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := readSnapshotRecord(dir)
		if err != nil {
			t.Fatalf("read back %s: %v", out, err)
		}
		rec.CreatedAt, again.CreatedAt = rec.CreatedAt.UTC(), again.CreatedAt.UTC()
		rec.Spec, again.Spec = canonicalSpec(rec.Spec), canonicalSpec(again.Spec)
		if len(rec.Labels) == 0 {
			rec.Labels = nil // omitempty
		}
		if !reflect.DeepEqual(again, rec) {
			t.Fatalf("read back\n%+v\nwant\n%+v", again, rec)
		}
	})
}

// checkRecordRewrite writes rec, changed, through the store readRecord
// gave, and checks it is what dir then holds, and that writing what was
// read back writes the same JSON.
func checkRecordRewrite(t *testing.T, dir string, store recordStore, rec record) {
	t.Helper()
	rec.Error = "rewritten"
	seq := store.seq
	if err := store.write(rec); err != nil {
		t.Fatalf("an accepted record does not write back: %v", err)
	}
	got, again, err := readRecord(dir)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	want := seq + 1
	if want >= maxRecordSeq {
		want = 1 // a new file, rather than a sequence that wraps
	}
	if again.seq != want || again != store {
		t.Fatalf("store after the write %+v, read back %+v; want seq %d", store, again, want)
	}
	if !reflect.DeepEqual(canonicalRecord(got), canonicalRecord(rec)) {
		t.Fatalf("read back\n%+v\nwant\n%+v", got, rec)
	}
	first, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	second, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if string(first) != string(second) {
		t.Fatalf("a record read back encodes differently:\n%s\n%s", first, second)
	}
}

// recordFileOf is a record file holding data in the slot of seq, as
// recordStore.create makes it.
func recordFileOf(seq uint64, data []byte) []byte {
	slot := int64(recordHeaderLen+len(data)+recordHeadroom+recordBlock-1) / recordBlock * recordBlock
	content := make([]byte, 2*slot)
	copy(content[int64(seq%2)*slot:], slotBytes(seq, data))
	return content
}

// clearRecordDir removes the record files an earlier input left in dir.
func clearRecordDir(t *testing.T, dir string) {
	t.Helper()
	for _, name := range []string{recordFile, legacyRecordFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

// canonicalRecord is rec as its JSON tells it: times in UTC (the offset
// is not part of the instant), and empty maps and slices that omitempty
// drops as nil.
func canonicalRecord(rec record) record {
	rec = rec.clone()
	rec.Spec = canonicalSpec(rec.Spec)
	rec.CreatedAt, rec.ReadyAt, rec.LastExitedAt = rec.CreatedAt.UTC(), rec.ReadyAt.UTC(), rec.LastExitedAt.UTC()
	if rec.Run != nil {
		rec.Run.StartedAt = rec.Run.StartedAt.UTC()
	}
	return rec
}

func canonicalSpec(s Spec) Spec {
	if len(s.Labels) == 0 {
		s.Labels = nil
	}
	if len(s.Env) == 0 {
		s.Env = nil
	}
	if len(s.Cmd) == 0 {
		s.Cmd = nil
	}
	if len(s.Mounts) == 0 {
		s.Mounts = nil
	}
	return s
}
