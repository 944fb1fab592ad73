package sysinfo

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParseMeminfo checks /proc/meminfo's parser never panics, names the
// line it rejects, and that sizes it accepts fit the API's int64 and
// parse back to themselves.
func FuzzParseMeminfo(f *testing.F) {
	f.Add("MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20480000 kB\n")
	f.Add("MemTotal:        8133508 kB\nMemFree:         6517308 kB\nMemAvailable:    7559388 kB\nBuffers:           41348 kB\n" +
		"HugePages_Total:       0\nHugePages_Free:        0\nHugepagesize:       2048 kB\nDirectMap1G:     2097152 kB\n")
	f.Add("MemAvailable: 1 kB\nMemTotal: 2 kB")       // another order, no final newline
	f.Add("MemTotal: 0 kB\r\nMemAvailable: 0 kB\r\n") // CRLF
	f.Add("MemTotal: 9007199254740991 kB\nMemAvailable: 9007199254740992 kB\n")
	f.Add("MemTotal: 18446744073709551615 kB\nMemAvailable: 1 kB\n")
	f.Add("MemTotal: -1 kB\nMemAvailable: 1 kB\n")
	f.Add("MemTotal: 1 MB\nMemAvailable: 1 kB\n")
	f.Add("MemTotal: 1\nMemAvailable: 1 kB\n")
	f.Add("MemTotal:\nMemAvailable: 1 kB\n")
	f.Add("Weird: x kB\nMemTotal: 1 kB\nMemAvailable: 1 kB\n") // a line the agent does not read
	f.Add("MemFree: 1 kB\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		total, avail, err := parseMeminfo([]byte(in))
		if err != nil {
			if msg := err.Error(); !strings.Contains(msg, "MemTotal") && !strings.Contains(msg, "MemAvailable") && !strings.Contains(msg, "too long") {
				t.Fatalf("error %q names no field", msg)
			}
			return
		}
		if total > math.MaxInt64 || avail > math.MaxInt64 || total%1024 != 0 || avail%1024 != 0 {
			t.Fatalf("total %d, available %d: not int64 sizes in whole kB", total, avail)
		}
		again := fmt.Sprintf("MemTotal: %d kB\nMemAvailable: %d kB\n", total/1024, avail/1024)
		if t2, a2, err := parseMeminfo([]byte(again)); err != nil || t2 != total || a2 != avail {
			t.Fatalf("round trip of %q: %d, %d, %v", again, t2, a2, err)
		}
	})
}

// FuzzParseLoadavg checks /proc/loadavg's parser never panics, names the
// field it rejects, and accepts only loads JSON can carry, which parse back
// to themselves.
func FuzzParseLoadavg(f *testing.F) {
	f.Add("0.52 0.25 0.10 1/234 5678\n")
	f.Add("0.00 0.00 0.00 1/1 1")
	f.Add("128.99 64.50 1e3 3/900 123456\n")
	f.Add("NaN 0 0 1/1 1\n")
	f.Add("0 +Inf 0 1/1 1\n")
	f.Add("0 0 -0.5 1/1 1\n")
	f.Add("0x1p-2 0_1 1e400 1/1 1\n")
	f.Add("0.5 0.5\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		loads, err := parseLoadavg([]byte(in))
		if err != nil {
			if msg := err.Error(); !strings.Contains(msg, "load average") {
				t.Fatalf("error %q names no field", msg)
			}
			return
		}
		if _, err := json.Marshal(loads); err != nil {
			t.Fatalf("accepted %v, which JSON cannot carry: %v", loads, err)
		}
		var parts []string
		for _, v := range loads {
			if v < 0 {
				t.Fatalf("negative load %v", v)
			}
			parts = append(parts, strconv.FormatFloat(v, 'g', -1, 64))
		}
		again := strings.Join(parts, " ") + " 1/1 1\n"
		if l2, err := parseLoadavg([]byte(again)); err != nil || l2 != loads {
			t.Fatalf("round trip of %q: %v, %v", again, l2, err)
		}
	})
}

// FuzzParseUptime checks /proc/uptime's parser never panics and accepts
// only an uptime a Duration can hold, which parses back to itself (within
// what a float64 of seconds can say).
func FuzzParseUptime(f *testing.F) {
	f.Add("12345.67 2345.00\n")
	f.Add("0.00 0.00\n")
	f.Add("92233720368.54 0\n") // past what a Duration holds
	f.Add("8589934591.99 0\n")
	f.Add("NaN 0\n")
	f.Add("-1 0\n")
	f.Add("inf\n")
	f.Add("1e-9999\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		d, err := parseUptime([]byte(in))
		if err != nil {
			if msg := err.Error(); !strings.Contains(msg, "uptime") && msg != "empty" {
				t.Fatalf("error %q names no field", msg)
			}
			return
		}
		if d < 0 {
			t.Fatalf("negative uptime %v", d)
		}
		again := strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
		d2, err := parseUptime([]byte(again))
		if err != nil {
			t.Fatalf("round trip of %q: %v", again, err)
		}
		if diff := (d2 - d).Abs(); diff > max(time.Nanosecond, d>>50) {
			t.Fatalf("round trip of %v through %q gave %v", d, again, d2)
		}
	})
}
