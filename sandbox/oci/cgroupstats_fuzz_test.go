package oci

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// FuzzParseKeyed checks the parser of flat keyed cgroup files (cpu.stat)
// never panics, names the line or key it rejects, and accepts only int64
// counters, which parse back to themselves.
func FuzzParseKeyed(f *testing.F) {
	f.Add("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 100\nnr_throttled 5\nthrottled_usec 25000\n")
	f.Add("nr_periods 0\r\nthrottled_time 9223372036854775807")
	f.Add("a 1\na 2\n")
	f.Add("a -1\n")
	f.Add("a 18446744073709551615\n")
	f.Add("a\n")
	f.Add("a 1 2\n\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		m, err := parseKeyed([]byte(in))
		if err != nil {
			if msg := err.Error(); !strings.Contains(msg, "line") && !strings.Contains(msg, "given twice") &&
				!strings.Contains(msg, "whole number") && !strings.Contains(msg, "too long") {
				t.Fatalf("error %q says not what is wrong", msg)
			}
			return
		}
		var again strings.Builder
		for k, v := range m {
			if v > math.MaxInt64 {
				t.Fatalf("%s: accepted %d, past int64", k, v)
			}
			fmt.Fprintf(&again, "%s %d\n", k, v)
		}
		m2, err := parseKeyed([]byte(again.String()))
		if err != nil || len(m2) != len(m) {
			t.Fatalf("round trip of %q: %v, %v", again.String(), m2, err)
		}
		for k, v := range m {
			if m2[k] != v {
				t.Fatalf("round trip of %s: %d, want %d", k, m2[k], v)
			}
		}
	})
}

// FuzzParseIOStat checks io.stat's parser (v2) and the blkio parser (v1)
// never panic, name what they reject, and give sums an int64 holds.
func FuzzParseIOStat(f *testing.F) {
	f.Add("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1000 wbytes=0 rios=3 wios=0 dbytes=0 dios=0\n")
	f.Add("8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n")
	f.Add("8:0 rbytes=9223372036854775807\n8:1 rbytes=1\n")
	f.Add("8:0 Read 9223372036854775807\n8:1 Read 1\n")
	f.Add("sda rbytes=1\n")
	f.Add("8:0 rbytes\n")
	f.Add("4294967296:0 Read 1\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		if io, err := parseIOStat([]byte(in)); err == nil {
			for _, v := range []uint64{io.ReadBytes, io.WriteBytes, io.ReadOps, io.WriteOps} {
				if v > math.MaxInt64 {
					t.Fatalf("io.stat: accepted a sum %d, past int64", v)
				}
			}
		} else if msg := err.Error(); !strings.Contains(msg, "device") && !strings.Contains(msg, "sum") && !strings.Contains(msg, "too long") {
			t.Fatalf("io.stat: error %q names no device", msg)
		}
		if r, w, err := parseBlkio([]byte(in)); err == nil {
			if r > math.MaxInt64 || w > math.MaxInt64 {
				t.Fatalf("blkio: accepted sums %d, %d, past int64", r, w)
			}
		} else if msg := err.Error(); !strings.Contains(msg, "device") && !strings.Contains(msg, "sum") && !strings.Contains(msg, "too long") {
			t.Fatalf("blkio: error %q names no device", msg)
		}
	})
}
