package sysinfo

// The guest's resource use, for /v1/stats: memory, load, pressure and the
// data volume's space, read fresh on each call.

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Stats is the guest's resource use at Time. Sizes are in bytes.
type Stats struct {
	Time        time.Time
	Memory      MemoryStats
	LoadAverage [3]float64
	Pressure    PressureSet
	// DataVolume is nil when the data volume is not mounted (or none is
	// configured).
	DataVolume *VolumeStats
}

// MemoryStats is /proc/meminfo's view: Used is Total - Available, as
// free(1) counts it.
type MemoryStats struct {
	Total, Available, Used uint64
	SwapTotal, SwapFree    uint64
}

// VolumeStats is a mounted filesystem's space (statfs(2)): Free is what an
// unprivileged writer may still use; Used is Total less every free block.
type VolumeStats struct {
	MountPoint        string
	Total, Used, Free uint64
}

// StatsSource says where the guest's stats come from. The zero value reads
// the real machine, without a data volume.
type StatsSource struct {
	ProcRoot string // "" means /proc
	// DataMount is where the data volume is mounted; "" reports none. It
	// is reported only while /proc/self/mountinfo shows a mount there, so a
	// volume not (yet) mounted is never mistaken for the directory under it.
	DataMount string
	Now       func() time.Time // nil means time.Now
}

// Collect reads the guest's stats; an error names what could not be read.
func (s StatsSource) Collect() (Stats, error) {
	proc := cmp.Or(s.ProcRoot, "/proc")
	now := s.Now
	if now == nil {
		now = time.Now
	}
	st := Stats{Time: now()}
	var errs []error
	if err := readStatsMeminfo(filepath.Join(proc, "meminfo"), &st.Memory); err != nil {
		errs = append(errs, err)
	}
	if err := readLoadavgInto(filepath.Join(proc, "loadavg"), &st.LoadAverage); err != nil {
		errs = append(errs, err)
	}
	for _, r := range []struct {
		name string
		dst  **Pressure
	}{{"cpu", &st.Pressure.CPU}, {"memory", &st.Pressure.Memory}, {"io", &st.Pressure.IO}} {
		p, err := readPressure(filepath.Join(proc, "pressure", r.name))
		if err != nil {
			errs = append(errs, err)
		}
		*r.dst = p
	}
	if s.DataMount != "" {
		vol, err := dataVolume(filepath.Join(proc, "self", "mountinfo"), s.DataMount)
		if err != nil {
			errs = append(errs, fmt.Errorf("data volume at %s: %w", s.DataMount, err))
		}
		st.DataVolume = vol
	}
	return st, errors.Join(errs...)
}

func readStatsMeminfo(path string, m *MemoryStats) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	v, err := parseMeminfoKeys(data, "MemTotal", "MemAvailable", "SwapTotal", "SwapFree")
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	m.Total, m.Available, m.SwapTotal, m.SwapFree = v[0], v[1], v[2], v[3]
	m.Used = m.Total - min(m.Available, m.Total)
	return nil
}

// parseMeminfoKeys returns the sizes, in bytes, of the given keys of
// /proc/meminfo ("Key:   N kB"), in their order; each must be there. Other
// lines are not looked at.
func parseMeminfoKeys(data []byte, keys ...string) ([]uint64, error) {
	vals := make([]uint64, len(keys))
	found := make([]bool, len(keys))
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, rest, _ := strings.Cut(sc.Text(), ":")
		i := -1
		for j, k := range keys {
			if k == key {
				i = j
			}
		}
		if i < 0 {
			continue
		}
		n, unit, _ := strings.Cut(strings.TrimSpace(rest), " ")
		kb, err := strconv.ParseUint(n, 10, 64)
		if err != nil || strings.TrimSpace(unit) != "kB" || kb > math.MaxInt64/1024 { // the API's sizes are int64 bytes
			return nil, fmt.Errorf("%s: %.64q is not a size in kB", key, strings.TrimSpace(rest))
		}
		vals[i], found[i] = kb*1024, true
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for i, k := range keys {
		if !found[i] {
			return nil, fmt.Errorf("no %s line", k)
		}
	}
	return vals, nil
}

func readLoadavgInto(path string, loads *[3]float64) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if *loads, err = parseLoadavg(data); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// readPressure reads a pressure file; nil without an error when the
// kernel has none to give (see PressureSet).
func readPressure(path string) (*Pressure, error) {
	data, err := os.ReadFile(path)
	if PressureAbsent(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p, err := ParsePressure(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &p, nil
}

// dataVolume is the space of the filesystem mounted at dir, or nil when
// mountinfo shows no mount there.
func dataVolume(mountinfo, dir string) (*VolumeStats, error) {
	resolved, err := filepath.EvalSymlinks(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		return nil, err
	}
	if !hasMountPoint(data, resolved) {
		return nil, nil
	}
	v := &VolumeStats{MountPoint: dir}
	if v.Total, v.Used, v.Free, err = statfsSpace(resolved); err != nil {
		return nil, err
	}
	return v, nil
}

// mountinfoUnescape undoes the octal escapes mountinfo writes for the
// characters that would break its fields (proc(5)). A Replacer builds its
// tables on first use: making it costs the start nothing.
var mountinfoUnescape = strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)

// hasMountPoint reports whether a line of mountinfo data mounts at dir
// (its fifth field).
func hasMountPoint(data []byte, dir string) bool {
	for line := range strings.SplitSeq(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && mountinfoUnescape.Replace(f[4]) == dir {
			return true
		}
	}
	return false
}
