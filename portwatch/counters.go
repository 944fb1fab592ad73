package portwatch

// A namespace's socket counters, as its /proc/net/sockstat and sockstat6
// show them: they move whenever a TCP socket starts listening (it enters
// the listening hash) or a UDP socket is bound (it enters the UDP hash),
// and whenever one leaves. Reading them costs a few microseconds where a
// dump walks the kernel's hash tables, so a scan dumps a namespace only
// when its counters moved, and every Recheck whatever they say.

import "bytes"

// counters are the per-namespace counters of sockstat and sockstat6; the
// files' other figures (orphans, memory, allocated) count every namespace
// and would make a busy one wake the watcher in all the others.
type counters [len(counterFields)]uint64

// counterFields names each counter: its line's label and its field.
var counterFields = [...]struct{ label, field string }{
	{"sockets", "used"}, // every socket of the namespace, of any family
	{"TCP", "inuse"},
	{"TCP", "tw"},
	{"UDP", "inuse"},
	{"TCP6", "inuse"},
	{"UDP6", "inuse"},
}

// parseSockstat sets in c the counters that b, the text of sockstat or
// sockstat6 ("TCP: inuse 3 orphan 0 tw 1 alloc 5 mem 2" lines), holds,
// leaving the others alone. It reports false for text it cannot read; it
// allocates nothing, for it runs every scan.
func parseSockstat(b []byte, c *counters) bool {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			if len(bytes.TrimSpace(line)) > 0 {
				return false
			}
			continue
		}
		label, rest := line[:colon], line[colon+1:]
		for {
			var name, value []byte
			name, rest = nextWord(rest)
			if name == nil {
				break
			}
			if value, rest = nextWord(rest); value == nil {
				return false // a field without its value
			}
			for i, f := range counterFields {
				if string(label) != f.label || string(name) != f.field {
					continue
				}
				v, ok := parseDecimal(value)
				if !ok {
					return false
				}
				c[i] = v
			}
		}
	}
	return true
}

// nextWord splits b after its first space-separated word; nil if none.
func nextWord(b []byte) (word, rest []byte) {
	b = bytes.TrimLeft(b, " ")
	if len(b) == 0 {
		return nil, nil
	}
	if i := bytes.IndexByte(b, ' '); i >= 0 {
		return b[:i], b[i:]
	}
	return b, nil
}

// parseDecimal reads an unsigned decimal that fits 64 bits.
func parseDecimal(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var v uint64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		v = v*10 + uint64(d-'0')
	}
	return v, true
}
