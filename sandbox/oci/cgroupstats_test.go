package oci

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sysinfo"
)

// fixtureReader reads a cgroup fixture: v2's files in dir, v1's in
// dir/<controller>/.
func fixtureReader(dir string, v2 bool) cgroupReader {
	return func(controller, file string) ([]byte, error) {
		path := filepath.Join(dir, file)
		if !v2 {
			m, _ := filepath.Glob(filepath.Join(dir, cmp.Or(controller, "*"), file))
			if len(m) == 0 {
				return nil, fmt.Errorf("%s: not in the cgroup: %w", file, fs.ErrNotExist)
			}
			path = m[0]
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: not in the cgroup: %w", file, err)
		}
		return data, err
	}
}

// fixtureCopy copies a cgroup fixture to a directory a test may change.
func fixtureCopy(t *testing.T, name string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	if err := os.CopyFS(dst, os.DirFS(filepath.Join("testdata", name))); err != nil {
		t.Fatal(err)
	}
	return dst
}

func u64(v uint64) *uint64 { return &v }

// fixtureStats is what both fixtures hold, but for what v1 lacks.
func fixtureStats() sandbox.Stats {
	return sandbox.Stats{
		CPU: sandbox.CPUStats{UsageUsec: 2500000, UserUsec: 2000000, SystemUsec: 500000,
			Throttling: &sandbox.CPUThrottling{Periods: 100, ThrottledPeriods: 5, ThrottledUsec: 25000}},
		Memory: sandbox.MemoryStats{Current: 52428800, Peak: u64(104857600), Limit: u64(536870912)},
		Pids:   sandbox.PidsStats{Current: 7, Limit: u64(1024)},
		IO:     &sandbox.IOStats{ReadBytes: 5096, WriteBytes: 8192, ReadOps: 4, WriteOps: 2},
	}
}

func TestCgroup2Stats(t *testing.T) {
	got, err := cgroupStats(fixtureReader("testdata/cgroup2", true), true)
	if err != nil {
		t.Fatal(err)
	}
	want := fixtureStats()
	want.Pressure = sysinfo.PressureSet{
		CPU:    &sysinfo.Pressure{Some: sysinfo.PressureLine{Avg10: 12.5, Avg60: 3, Avg300: 0.75, TotalUsec: 400000}, Full: &sysinfo.PressureLine{Avg10: 10, Avg60: 2.5, Avg300: 0.5, TotalUsec: 300000}},
		Memory: &sysinfo.Pressure{Some: sysinfo.PressureLine{TotalUsec: 1000}, Full: &sysinfo.PressureLine{TotalUsec: 500}},
		IO:     &sysinfo.Pressure{Some: sysinfo.PressureLine{Avg10: 0.5, Avg60: 0.25, Avg300: 0.1, TotalUsec: 2000}, Full: &sysinfo.PressureLine{Avg10: 0.4, Avg60: 0.2, Avg300: 0.05, TotalUsec: 1500}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %s\nwant %s", dump(got), dump(want))
	}
}

// TestCgroup2StatsOlderKernel: what an older kernel or a cgroup without
// the io controller or PSI lacks is left out, and no limit is nil.
func TestCgroup2StatsOlderKernel(t *testing.T) {
	dir := fixtureCopy(t, "cgroup2")
	for _, f := range []string{"memory.peak", "io.stat", "cpu.pressure", "memory.pressure", "io.pressure"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	for f, data := range map[string]string{"memory.max": "max\n", "pids.max": "max\n", "cpu.stat": "usage_usec 3\nuser_usec 2\nsystem_usec 1\n"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := cgroupStats(fixtureReader(dir, true), true)
	if err != nil {
		t.Fatal(err)
	}
	want := sandbox.Stats{CPU: sandbox.CPUStats{UsageUsec: 3, UserUsec: 2, SystemUsec: 1},
		Memory: sandbox.MemoryStats{Current: 52428800}, Pids: sandbox.PidsStats{Current: 7}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %s\nwant %s", dump(got), dump(want))
	}
}

func TestCgroup1Stats(t *testing.T) {
	got, err := cgroupStats(fixtureReader("testdata/cgroup1", false), false)
	if err != nil {
		t.Fatal(err)
	}
	want := fixtureStats()
	want.Memory.Limit, want.Pids.Limit = nil, nil // "unlimited" and "max"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %s\nwant %s", dump(got), dump(want))
	}
}

// TestCgroupStatsMalformed: a malformed or missing file is an error that
// names the file and what is wrong, never a panic or a zero.
func TestCgroupStatsMalformed(t *testing.T) {
	for _, tc := range []struct {
		v2         bool
		file, data string // data "" removes the file
		want       string
	}{
		{true, "cpu.stat", "usage_usec 1\nuser_usec 1\n", "cpu.stat: no system_usec"},
		{true, "cpu.stat", "usage_usec x\nuser_usec 1\nsystem_usec 1\n", `cpu.stat: usage_usec: "x" is not a whole number`},
		{true, "cpu.stat", "usage_usec 1 2\n", `cpu.stat: line "usage_usec 1 2" is not a key and a value`},
		{true, "cpu.stat", "usage_usec 1\nusage_usec 1\n", "cpu.stat: usage_usec given twice"},
		{true, "memory.current", "-1\n", `memory.current: "-1" is not a whole number`},
		{true, "memory.current", "", "memory.current: not in the cgroup"},
		{true, "memory.max", "lots\n", `memory.max: "lots" is not a whole number`},
		{true, "pids.current", "9223372036854775808\n", `pids.current: "9223372036854775808" is not a whole number from 0 to 2^63-1`},
		{true, "io.stat", "sda rbytes=1\n", `io.stat: "sda" is not a device`},
		{true, "io.stat", "8:0 rbytes\n", `io.stat: device 8:0: "rbytes" is not key=value`},
		{true, "io.stat", "8:0 rbytes=x\n", `io.stat: device 8:0: rbytes: "x" is not a whole number`},
		{true, "io.stat", "8:0 rbytes=9223372036854775807\n8:1 rbytes=1\n", "io.stat: rbytes: the sum over devices is past 2^63-1"},
		{true, "cpu.pressure", "some avg10=x\n", "cpu.pressure: pressure line some"},
		{false, "cpuacct/cpuacct.usage", "", "cpuacct.usage: not in the cgroup"},
		{false, "memory/memory.usage_in_bytes", "1.5\n", `memory.usage_in_bytes: "1.5" is not a whole number`},
		{false, "blkio/blkio.throttle.io_service_bytes", "8:0 Read\n", `blkio.throttle.io_service_bytes: line "8:0 Read" is not a device, an operation and a count`},
		{false, "blkio/blkio.throttle.io_serviced", "8:0 Write -2\n", `blkio.throttle.io_serviced: device 8:0: Write: "-2" is not a whole number`},
	} {
		t.Run(tc.file, func(t *testing.T) {
			name := "cgroup1"
			if tc.v2 {
				name = "cgroup2"
			}
			dir := fixtureCopy(t, name)
			var err error
			if tc.data == "" {
				err = os.Remove(filepath.Join(dir, tc.file))
			} else {
				err = os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.data), 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
			_, err = cgroupStats(fixtureReader(dir, tc.v2), tc.v2)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// dump shows stats with what their pointers point at.
func dump(st sandbox.Stats) string {
	b, _ := json.Marshal(st)
	return string(b)
}
