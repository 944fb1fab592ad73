package portwatch

import (
	"strings"
	"testing"
)

const (
	sockstatText = `sockets: used 129
TCP: inuse 7 orphan 1 tw 3 alloc 12 mem 4
UDP: inuse 2 mem 8
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
`
	sockstat6Text = `TCP6: inuse 5
UDP6: inuse 1
UDPLITE6: inuse 0
RAW6: inuse 0
FRAG6: inuse 0 memory 0
`
)

func TestParseSockstat(t *testing.T) {
	var c counters
	if !parseSockstat([]byte(sockstatText), &c) || !parseSockstat([]byte(sockstat6Text), &c) {
		t.Fatal("parseSockstat rejected the kernel's text")
	}
	if want := (counters{129, 7, 3, 2, 5, 1}); c != want {
		t.Fatalf("counters %v, want %v", c, want)
	}

	// The figures shared by every namespace do not count.
	var d counters
	other := strings.NewReplacer("orphan 1", "orphan 9", "alloc 12", "alloc 99", "mem 4", "mem 40", "mem 8", "mem 80").Replace(sockstatText)
	if !parseSockstat([]byte(other), &d) || !parseSockstat([]byte(sockstat6Text), &d) || d != c {
		t.Fatalf("counters %v from text differing in global figures only, want %v", d, c)
	}

	for _, bad := range []string{
		"TCP: inuse",                      // a field without its value
		"TCP: inuse x",                    // not a number
		"TCP: inuse -1",                   // nor this
		"TCP: inuse 99999999999999999999", // too long
		"garbage\n",
	} {
		var c counters
		if parseSockstat([]byte(bad), &c) {
			t.Errorf("parseSockstat accepted %q", bad)
		}
	}
	var e counters
	if !parseSockstat([]byte("\n\nsockets: used 1"), &e) || e[0] != 1 {
		t.Errorf("blank lines and no final newline: counters %v", e)
	}
}

func TestParseSockstatAllocs(t *testing.T) {
	b := []byte(sockstatText)
	var c counters
	if n := testing.AllocsPerRun(100, func() { parseSockstat(b, &c) }); n != 0 {
		t.Fatalf("parseSockstat allocates %v times, want 0", n)
	}
}

// FuzzParseSockstat checks the parser never panics, whatever /proc says.
func FuzzParseSockstat(f *testing.F) {
	f.Add([]byte(sockstatText))
	f.Add([]byte(sockstat6Text))
	f.Add([]byte("TCP: inuse 18446744073709551615"))
	f.Add([]byte("::::"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var c counters
		parseSockstat(in, &c)
	})
}
