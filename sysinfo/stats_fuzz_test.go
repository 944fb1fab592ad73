package sysinfo

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// FuzzParsePressure checks the PSI parser never panics, names the line
// or key it rejects, and that what it accepts is percentages and int64
// totals that parse back to themselves.
func FuzzParsePressure(f *testing.F) {
	f.Add("some avg10=53.50 avg60=15.12 avg300=6.15 total=8776820738\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
	f.Add("some avg10=0.00 avg60=0.00 avg300=0.00 total=0")
	f.Add("some avg10=100.00 avg60=1e2 avg300=0x1p-2 total=9223372036854775807\n")
	f.Add("full avg10=0 avg60=0 avg300=0 total=0\nsome avg10=0 avg60=0 avg300=0 total=0 extra=1\n")
	f.Add("some avg10=NaN avg60=Inf avg300=-0 total=1\n")
	f.Add("some avg10=0 avg60=0 avg300=0 total=18446744073709551615\n")
	f.Add("some =\n")
	f.Add("some\n")
	f.Add("\n\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParsePressure([]byte(in))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "pressure") {
				t.Fatalf("error %q does not say it is about pressure", err)
			}
			return
		}
		lines := []PressureLine{p.Some}
		if p.Full != nil {
			lines = append(lines, *p.Full)
		}
		var again strings.Builder
		for i, l := range lines {
			for _, v := range []float64{l.Avg10, l.Avg60, l.Avg300} {
				if !(v >= 0 && v <= 100) {
					t.Fatalf("accepted %v, not a percentage", v)
				}
			}
			if int64(l.TotalUsec) < 0 {
				t.Fatalf("accepted total %d, past int64", l.TotalUsec)
			}
			fmt.Fprintf(&again, "%s avg10=%s avg60=%s avg300=%s total=%d\n", []string{"some", "full"}[i],
				strconv.FormatFloat(l.Avg10, 'g', -1, 64), strconv.FormatFloat(l.Avg60, 'g', -1, 64),
				strconv.FormatFloat(l.Avg300, 'g', -1, 64), l.TotalUsec)
		}
		p2, err := ParsePressure([]byte(again.String()))
		if err != nil || p2.Some != p.Some || (p2.Full == nil) != (p.Full == nil) || p.Full != nil && *p2.Full != *p.Full {
			t.Fatalf("round trip of %q: %+v, %v", again.String(), p2, err)
		}
	})
}

// FuzzParseMeminfoKeys checks the stats' meminfo parser never panics,
// names the key it rejects or misses, and accepts only int64 sizes in
// whole kB.
func FuzzParseMeminfoKeys(f *testing.F) {
	f.Add("MemTotal: 8 kB\nMemAvailable: 4 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n")
	f.Add("SwapFree: 1 kB\nSwapTotal: 2 kB\nMemAvailable: 3 kB\nMemTotal: 4 kB")
	f.Add("MemTotal: 9007199254740991 kB\nMemAvailable: 9007199254740992 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n")
	f.Add("MemTotal: 1 MB\nMemAvailable: 1 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n")
	f.Add("MemTotal:\n")
	f.Add("")
	keys := []string{"MemTotal", "MemAvailable", "SwapTotal", "SwapFree"}
	f.Fuzz(func(t *testing.T, in string) {
		vals, err := parseMeminfoKeys([]byte(in), keys...)
		if err != nil {
			named := false
			for _, k := range keys {
				named = named || strings.Contains(err.Error(), k)
			}
			if !named && !strings.Contains(err.Error(), "too long") {
				t.Fatalf("error %q names no key", err)
			}
			return
		}
		for i, v := range vals {
			if int64(v) < 0 || v%1024 != 0 {
				t.Fatalf("%s: %d is not an int64 size in whole kB", keys[i], v)
			}
		}
	})
}
