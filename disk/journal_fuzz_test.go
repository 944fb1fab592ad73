package disk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzFormatJournal reads arbitrary bytes as the format intent journal.
// pending never panics, and rejects what it cannot decode with an error
// naming the journal's path; an intent it accepts encodes and decodes back
// to itself. And any intent (any device path, any identity) survives the
// journal's encoding, so a recorded format is pending for its device.
func FuzzFormatJournal(f *testing.F) {
	for _, s := range []struct{ data, id string }{
		{`{"device":"/dev/vdb","id":"block 254:16","started":"2025-01-02T03:04:05.123456789Z"}` + "\n", "block 254:16"},
		{`{"device":"/run/arcbox/data.img","id":"file 254:1 inode 1234567","started":"2025-01-02T03:04:05Z"}`, "file 254:1 inode 1234567"},
		{`{"device":"/dev/vdb","id":"block 254:16","started":"2025-01-02T03:04:05+14:00"}`, "block 254:32"}, // another device
		{`{"id":"block 254:16"}`, "block 254:16"},                          // fields missing
		{`{"ID":"block 254:16","extra":[1,2,{"x":null}]}`, "block 254:16"}, // other spellings, unknown fields
		{`{"id":"block 254:16","started":"not a time"}`, "block 254:16"},
		{`{"id":"block 254:16","started":"0000-01-01T00:00:00-23:59"}`, "block 254:16"},
		{`{"id":"block 254:16","id":"block 254:32"}`, "block 254:32"}, // duplicate key
		{`{"device":"/dev/vdb","id":"bl`, "block 254:16"},             // torn
		{"", "block 254:16"},
		{"null", ""},
		{`"block 254:16"`, "block 254:16"},
		{"\xef\xbb\xbf{}", ""}, // byte order mark
		{`{"device":"/dev/\u00e9\ud800\xff","id":"block\u0020254:16"}`, "block 254:16"},
	} {
		f.Add([]byte(s.data), s.id)
	}
	// One file for every input: they run one at a time in each process.
	j := journal{path: filepath.Join(f.TempDir(), journalName)}
	f.Fuzz(func(t *testing.T, data []byte, id string) {
		if err := os.WriteFile(j.path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		in, decodeErr := decodeIntent(data)
		ok, err := j.pending(id)
		switch {
		case decodeErr != nil && (ok || err == nil || !strings.Contains(err.Error(), j.path)):
			t.Fatalf("undecodable journal (%v): pending = %v, %v; want false and an error naming %s", decodeErr, ok, err, j.path)
		case decodeErr == nil && (err != nil || ok != (in.ID == id)):
			t.Fatalf("journal for %q: pending(%q) = %v, %v", in.ID, id, ok, err)
		case decodeErr == nil:
			checkIntentRoundTrip(t, in)
		}

		// Identities are made by deviceID, always ASCII; JSON would turn
		// invalid UTF-8 into U+FFFD and no such identity exists.
		if utf8.ValidString(id) {
			checkIntentRoundTrip(t, formatIntent{Device: string(data), ID: id, Started: time.Now().UTC()})
		}
	})
}

// checkIntentRoundTrip checks in encodes and decodes to the same intent.
// A device path is only for people reading the file: JSON may replace
// what is not UTF-8 in it.
func checkIntentRoundTrip(t *testing.T, in formatIntent) {
	t.Helper()
	data, err := encodeIntent(in)
	if err != nil {
		t.Fatalf("encode %+v: %v", in, err)
	}
	out, err := decodeIntent(data)
	if err != nil {
		t.Fatalf("decode %q: %v", data, err)
	}
	if out.ID != in.ID || !out.Started.Equal(in.Started) || utf8.ValidString(in.Device) && out.Device != in.Device {
		t.Fatalf("round trip of %+v gave %+v", in, out)
	}
}
