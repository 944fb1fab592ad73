package events

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Event is one thing that happened, as the journal stores and serves it.
// Its JSON form is the wire form of the API's Event schema:
//
//	{"seq":N,"sandbox_id":"...","action":"...","timestamp":<unix nanos>,"attributes":{...}}
//
// sandbox_id is omitted when empty (an event about no sandbox), attributes
// when there are none. The journal shares an event's Attributes with every
// subscriber: they are read-only once appended.
type Event struct {
	Seq        uint64
	Time       time.Time
	SandboxID  string
	Action     string
	Attributes map[string]string
}

// Filter selects events; every set field must match.
type Filter struct {
	SandboxID string
	Action    string
}

// Match reports whether e passes the filter.
func (f Filter) Match(e *Event) bool {
	return (f.SandboxID == "" || f.SandboxID == e.SandboxID) && (f.Action == "" || f.Action == e.Action)
}

// MarshalJSON encodes the wire form, with attributes in key order.
func (e Event) MarshalJSON() ([]byte, error) {
	return e.appendJSON(nil), nil
}

// wireEvent decodes the wire form.
type wireEvent struct {
	Seq        uint64            `json:"seq"`
	SandboxID  string            `json:"sandbox_id"`
	Action     string            `json:"action"`
	Timestamp  int64             `json:"timestamp"`
	Attributes map[string]string `json:"attributes"`
}

// UnmarshalJSON decodes the wire form; seq must be at least 1 and action
// set, as the journal never writes anything else.
func (e *Event) UnmarshalJSON(b []byte) error {
	var w wireEvent
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.Seq == 0 {
		return errors.New(`event: "seq" is missing or 0`)
	}
	if w.Action == "" {
		return errors.New(`event: "action" is missing or empty`)
	}
	*e = Event{Seq: w.Seq, Time: time.Unix(0, w.Timestamp), SandboxID: w.SandboxID, Action: w.Action}
	if len(w.Attributes) > 0 {
		e.Attributes = w.Attributes
	}
	return nil
}

// appendJSON appends the wire form to b. It is written by hand because it
// runs once per Append on the hot path: one allocation, no reflection.
func (e *Event) appendJSON(b []byte) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	if e.SandboxID != "" {
		b = append(b, `,"sandbox_id":`...)
		b = appendString(b, e.SandboxID)
	}
	b = append(b, `,"action":`...)
	b = appendString(b, e.Action)
	b = append(b, `,"timestamp":`...)
	b = strconv.AppendInt(b, e.Time.UnixNano(), 10)
	if len(e.Attributes) > 0 {
		var small [8]string
		keys := small[:0]
		for k := range e.Attributes {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, `,"attributes":{`...)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, e.Attributes[k])
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// encodedLen is a close upper guess of appendJSON's length, so the line is
// allocated once.
func (e *Event) encodedLen() int {
	n := 120 + len(e.SandboxID) + len(e.Action)
	for k, v := range e.Attributes {
		n += 6 + len(k) + len(v)
	}
	return n
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string the way encoding/json does
// without HTML escaping: invalid UTF-8 becomes U+FFFD, control characters
// and U+2028/U+2029 are escaped.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
