package sysinfo

// Pressure stall information (PSI): the format the kernel writes both in
// /proc/pressure/{cpu,memory,io} (the whole guest) and in a cgroup v2's
// {cpu,memory,io}.pressure (one sandbox), so the guest's stats and the
// sandboxes' share this parser.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// PressureLine is one line of a pressure file: the share of wall time, in
// percent (0 to 100), in which tasks were stalled on the resource, as
// running averages over 10, 60 and 300 seconds, and the total stall time
// since the count began, in microseconds.
type PressureLine struct {
	Avg10, Avg60, Avg300 float64
	TotalUsec            uint64
}

// Pressure is one resource's pressure: Some, the time at least one task
// was stalled; Full, the time all non-idle tasks were stalled at once. Full
// is nil where the kernel writes no full line (cpu before Linux 5.13).
type Pressure struct {
	Some PressureLine
	Full *PressureLine
}

// PressureSet is the pressure of CPU, memory and IO. A nil member is one
// the kernel does not report: built without PSI, booted with psi=0, or a
// cgroup whose pressure accounting is off (cgroup.pressure 0).
type PressureSet struct {
	CPU, Memory, IO *Pressure
}

// ParsePressure parses a pressure file ("some avg10=0.12 avg60=0.05
// avg300=0.01 total=12345" and maybe a "full ..." line). A line needs all
// four keys once; keys a later kernel may add are skipped. An error names
// the line and key it rejects.
func ParsePressure(data []byte) (Pressure, error) {
	var p Pressure
	var haveSome bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		kind := fields[0]
		if kind != "some" && kind != "full" {
			return Pressure{}, fmt.Errorf("pressure line %.64q is neither some nor full", kind)
		}
		if kind == "some" && haveSome || kind == "full" && p.Full != nil {
			return Pressure{}, fmt.Errorf("pressure line %s given twice", kind)
		}
		line, err := parsePressureLine(fields[1:])
		if err != nil {
			return Pressure{}, fmt.Errorf("pressure line %s: %w", kind, err)
		}
		if kind == "some" {
			p.Some, haveSome = line, true
		} else {
			p.Full = &line
		}
	}
	if err := sc.Err(); err != nil {
		return Pressure{}, fmt.Errorf("pressure: %w", err)
	}
	if !haveSome {
		return Pressure{}, errors.New("pressure: no some line")
	}
	return p, nil
}

// parsePressureLine reads a line's key=value fields.
func parsePressureLine(fields []string) (PressureLine, error) {
	var l PressureLine
	seen := map[string]bool{}
	for _, f := range fields {
		key, val, ok := strings.Cut(f, "=")
		if !ok {
			return l, fmt.Errorf("%.64q is not key=value", f)
		}
		var avg *float64
		switch key {
		case "avg10":
			avg = &l.Avg10
		case "avg60":
			avg = &l.Avg60
		case "avg300":
			avg = &l.Avg300
		case "total":
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil || n > math.MaxInt64 { // the API's counters are int64
				return l, fmt.Errorf("total %.64q is not a number of microseconds", val)
			}
			l.TotalUsec = n
		default:
			continue
		}
		if seen[key] {
			return l, fmt.Errorf("%s given twice", key)
		}
		seen[key] = true
		if avg != nil {
			v, err := strconv.ParseFloat(val, 64)
			// NaN fails both comparisons.
			if err != nil || !(v >= 0 && v <= 100) {
				return l, fmt.Errorf("%s %.64q is not a percentage", key, val)
			}
			*avg = v
		}
	}
	for _, key := range []string{"avg10", "avg60", "avg300", "total"} {
		if !seen[key] {
			return l, fmt.Errorf("no %s", key)
		}
	}
	return l, nil
}
