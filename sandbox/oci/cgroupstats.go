package oci

// A sandbox's resource use from its cgroup's files: the parsers, and how
// the files of cgroup v2 and of v1 make a sandbox.Stats. Reading the files
// is stats_linux.go's; the parsers run on fixtures anywhere.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"strconv"
	"strings"

	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sysinfo"
)

// cgroupReader reads a file of the sandbox's cgroup: on cgroup v1, in the
// hierarchy of controller (any for ""); v2 has one hierarchy, and ignores
// it. A file the cgroup lacks is an error that wraps fs.ErrNotExist.
type cgroupReader func(controller, file string) ([]byte, error)

// cgroupStats reads a sandbox's stats from its cgroup v2 (v2) or v1
// files. An error names the file and what is wrong in it.
func cgroupStats(read cgroupReader, v2 bool) (sandbox.Stats, error) {
	var st sandbox.Stats
	var err error
	if v2 {
		err = cgroup2Stats(read, &st)
	} else {
		err = cgroup1Stats(read, &st)
	}
	if err != nil {
		return sandbox.Stats{}, err
	}
	for _, r := range []struct {
		file string
		dst  **sysinfo.Pressure
	}{{"cpu.pressure", &st.Pressure.CPU}, {"memory.pressure", &st.Pressure.Memory}, {"io.pressure", &st.Pressure.IO}} {
		// On v1, a kernel may keep pressure in the v2 hierarchy of a
		// hybrid layout: wherever the file is.
		data, err := read("", r.file)
		if sysinfo.PressureAbsent(err) {
			continue
		}
		if err != nil {
			return sandbox.Stats{}, err
		}
		p, err := sysinfo.ParsePressure(data)
		if err != nil {
			return sandbox.Stats{}, fmt.Errorf("%s: %w", r.file, err)
		}
		*r.dst = &p
	}
	return st, nil
}

// cgroup2Stats reads cpu.stat, memory.{current,peak,max},
// pids.{current,max} and io.stat.
func cgroup2Stats(read cgroupReader, st *sandbox.Stats) error {
	cpu, err := readKeyed(read, "cpu", "cpu.stat", "usage_usec", "user_usec", "system_usec")
	if err != nil {
		return err
	}
	st.CPU = sandbox.CPUStats{UsageUsec: cpu["usage_usec"], UserUsec: cpu["user_usec"], SystemUsec: cpu["system_usec"]}
	st.CPU.Throttling = throttling(cpu, "throttled_usec", 1)
	if err := readMemoryAndPids(read, st, "memory.current", "memory.peak", "memory.max"); err != nil {
		return err
	}
	data, err := read("io", "io.stat")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IO, err = parseIOStat(data); err != nil {
		return fmt.Errorf("io.stat: %w", err)
	}
	return nil
}

// cgroup1Stats reads the v1 controllers' files: cpuacct's usage (in
// nanoseconds), cpu's cpu.stat, memory's usage and its peak (v1 always
// keeps one), pids', and blkio's throttle counters (kept whatever the IO
// scheduler).
func cgroup1Stats(read cgroupReader, st *sandbox.Stats) error {
	for _, f := range []struct {
		file string
		dst  *uint64
	}{{"cpuacct.usage", &st.CPU.UsageUsec}, {"cpuacct.usage_user", &st.CPU.UserUsec}, {"cpuacct.usage_sys", &st.CPU.SystemUsec}} {
		ns, err := readValue(read, "cpuacct", f.file)
		if err != nil {
			return err
		}
		*f.dst = ns / 1000
	}
	cpu, err := readKeyed(read, "cpu", "cpu.stat")
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		st.CPU.Throttling = throttling(cpu, "throttled_time", 1000)
	}
	if err := readMemoryAndPids(read, st, "memory.usage_in_bytes", "memory.max_usage_in_bytes", "memory.limit_in_bytes"); err != nil {
		return err
	}
	bytesData, err := read("blkio", "blkio.throttle.io_service_bytes")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	opsData, err := read("blkio", "blkio.throttle.io_serviced")
	if err != nil {
		return err
	}
	st.IO = &sandbox.IOStats{}
	if st.IO.ReadBytes, st.IO.WriteBytes, err = parseBlkio(bytesData); err != nil {
		return fmt.Errorf("blkio.throttle.io_service_bytes: %w", err)
	}
	if st.IO.ReadOps, st.IO.WriteOps, err = parseBlkio(opsData); err != nil {
		return fmt.Errorf("blkio.throttle.io_serviced: %w", err)
	}
	return nil
}

// throttling is the throttling counters of a cpu.stat, its throttled time
// (key timeKey) in microseconds by dividing by div; nil unless all three
// are there.
func throttling(cpu map[string]uint64, timeKey string, div uint64) *sandbox.CPUThrottling {
	periods, ok1 := cpu["nr_periods"]
	throttled, ok2 := cpu["nr_throttled"]
	t, ok3 := cpu[timeKey]
	if !ok1 || !ok2 || !ok3 {
		return nil
	}
	return &sandbox.CPUThrottling{Periods: periods, ThrottledPeriods: throttled, ThrottledUsec: t / div}
}

// readMemoryAndPids reads the memory controller's files of the given
// names (they differ between v1 and v2), and the pids controller's, which
// do not.
func readMemoryAndPids(read cgroupReader, st *sandbox.Stats, current, peak, limit string) error {
	var err error
	if st.Memory.Current, err = readValue(read, "memory", current); err != nil {
		return err
	}
	if st.Memory.Peak, err = readOptionalValue(read, "memory", peak); err != nil {
		return err
	}
	if st.Memory.Limit, err = readLimit(read, "memory", limit); err != nil {
		return err
	}
	if st.Pids.Current, err = readValue(read, "pids", "pids.current"); err != nil {
		return err
	}
	st.Pids.Limit, err = readLimit(read, "pids", "pids.max")
	return err
}

// readKeyed reads a flat keyed file ("key value" lines), which must have
// the keys required.
func readKeyed(read cgroupReader, controller, file string, required ...string) (map[string]uint64, error) {
	data, err := read(controller, file)
	if err != nil {
		return nil, err
	}
	m, err := parseKeyed(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	for _, k := range required {
		if _, ok := m[k]; !ok {
			return nil, fmt.Errorf("%s: no %s", file, k)
		}
	}
	return m, nil
}

// readValue reads a file of one number.
func readValue(read cgroupReader, controller, file string) (uint64, error) {
	data, err := read(controller, file)
	if err != nil {
		return 0, err
	}
	v, err := parseCounter(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return v, nil
}

// readOptionalValue reads a file of one number that older kernels lack: nil
// then.
func readOptionalValue(read cgroupReader, controller, file string) (*uint64, error) {
	v, err := readValue(read, controller, file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &v, nil
}

// noLimit is where a v1 limit means none: the kernel writes its page
// counter's maximum (about 2^63, rounded down to pages) for "unlimited".
const noLimit = 1 << 62

// readLimit reads a limit: a number, or "max" (v2) or a huge one (v1)
// for none, which is nil.
func readLimit(read cgroupReader, controller, file string) (*uint64, error) {
	data, err := read(controller, file)
	if err != nil {
		return nil, err
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return nil, nil
	}
	v, err := parseCounter(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if v >= noLimit {
		return nil, nil
	}
	return &v, nil
}

// parseCounter parses a counter or size: a whole number an int64 holds,
// as the API's are.
func parseCounter(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > math.MaxInt64 {
		return 0, fmt.Errorf("%.64q is not a whole number from 0 to 2^63-1", s)
	}
	return v, nil
}

// parseKeyed parses a flat keyed file: "key value" lines (cpu.stat). A
// key given twice is an error.
func parseKeyed(data []byte) (map[string]uint64, error) {
	m := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return nil, fmt.Errorf("line %.64q is not a key and a value", sc.Text())
		}
		if _, dup := m[f[0]]; dup {
			return nil, fmt.Errorf("%.64s given twice", f[0])
		}
		v, err := parseCounter(f[1])
		if err != nil {
			return nil, fmt.Errorf("%.64s: %w", f[0], err)
		}
		m[f[0]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// parseIOStat sums cgroup v2's io.stat over its devices ("8:0 rbytes=1
// wbytes=2 rios=3 wios=4 dbytes=0 dios=0" lines; no line for a device
// without IO). Keys other than the four are skipped.
func parseIOStat(data []byte) (*sandbox.IOStats, error) {
	io := &sandbox.IOStats{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if !isDevice(f[0]) {
			return nil, fmt.Errorf("%.64q is not a device major:minor", f[0])
		}
		for _, kv := range f[1:] {
			key, val, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("device %s: %.64q is not key=value", f[0], kv)
			}
			var dst *uint64
			switch key {
			case "rbytes":
				dst = &io.ReadBytes
			case "wbytes":
				dst = &io.WriteBytes
			case "rios":
				dst = &io.ReadOps
			case "wios":
				dst = &io.WriteOps
			default:
				continue
			}
			v, err := parseCounter(val)
			if err != nil {
				return nil, fmt.Errorf("device %s: %s: %w", f[0], key, err)
			}
			if *dst, err = addCounter(*dst, v); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return io, nil
}

// parseBlkio sums the Read and Write lines of a v1 blkio file ("8:0 Read
// 4096" lines, other operations, and a "Total N" line, which is skipped).
func parseBlkio(data []byte) (read, write uint64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || len(f) == 2 && f[0] == "Total" {
			continue
		}
		if len(f) != 3 || !isDevice(f[0]) {
			return 0, 0, fmt.Errorf("line %.64q is not a device, an operation and a count", sc.Text())
		}
		v, err := parseCounter(f[2])
		if err != nil {
			return 0, 0, fmt.Errorf("device %s: %.64s: %w", f[0], f[1], err)
		}
		switch f[1] {
		case "Read":
			read, err = addCounter(read, v)
		case "Write":
			write, err = addCounter(write, v)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", f[1], err)
		}
	}
	return read, write, sc.Err()
}

// addCounter adds counters, refusing a sum an int64 cannot hold.
func addCounter(a, b uint64) (uint64, error) {
	if a+b > math.MaxInt64 {
		return 0, errors.New("the sum over devices is past 2^63-1")
	}
	return a + b, nil
}

// isDevice reports whether s is a device number, major:minor.
func isDevice(s string) bool {
	maj, minor, ok := strings.Cut(s, ":")
	_, err1 := strconv.ParseUint(maj, 10, 32)
	_, err2 := strconv.ParseUint(minor, 10, 32)
	return ok && err1 == nil && err2 == nil
}
