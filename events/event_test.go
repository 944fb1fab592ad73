package events

import (
	"encoding/json"
	"testing"
	"time"
)

func TestEventJSON(t *testing.T) {
	at := time.Unix(1700000000, 123456789)
	for _, tc := range []struct {
		ev   Event
		want string
	}{
		{Event{Seq: 7, Time: at, SandboxID: "sb-1", Action: "idle", Attributes: map[string]string{"exit_code": "0", "b": "x\"y"}},
			`{"seq":7,"sandbox_id":"sb-1","action":"idle","timestamp":1700000000123456789,"attributes":{"b":"x\"y","exit_code":"0"}}`},
		{Event{Seq: 1, Time: at, Action: "port.open"},
			`{"seq":1,"action":"port.open","timestamp":1700000000123456789}`},
		{Event{Seq: 2, Time: at, Action: "failed", Attributes: map[string]string{}},
			`{"seq":2,"action":"failed","timestamp":1700000000123456789}`},
	} {
		b, err := json.Marshal(tc.ev)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("got  %s\nwant %s", b, tc.want)
		}
		var back Event
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.Seq != tc.ev.Seq || !back.Time.Equal(tc.ev.Time) || back.SandboxID != tc.ev.SandboxID || back.Action != tc.ev.Action || len(back.Attributes) != len(tc.ev.Attributes) {
			t.Errorf("round trip of %s: got %+v", b, back)
		}
	}
}

func TestEventUnmarshalRejects(t *testing.T) {
	for _, in := range []string{`{"action":"x","timestamp":1}`, `{"seq":0,"action":"x"}`, `{"seq":3,"timestamp":1}`, `{"seq":-1,"action":"x"}`, `[]`} {
		var e Event
		if err := json.Unmarshal([]byte(in), &e); err == nil {
			t.Errorf("%s: decoded as %+v, want an error", in, e)
		}
	}
}

// FuzzAppendString checks the hand-written string encoder against
// encoding/json: valid JSON that decodes to what encoding/json's encoding
// decodes to.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"b\\", "\n\r\t\x00\x1f\x7f", "é漢", "\xff\xfe", "\u2028\u2029", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mine := appendString(nil, s)
		var got string
		if err := json.Unmarshal(mine, &got); err != nil {
			t.Fatalf("%q encodes as %s, not JSON: %v", s, mine, err)
		}
		ref, _ := json.Marshal(s)
		var want string
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%q: mine decodes to %q, encoding/json's to %q", s, got, want)
		}
	})
}
