// Package sysinfo collects facts about the guest system: kernel, memory,
// CPUs, load, uptime and addresses, from the kernel's interfaces (uname,
// /proc, the interface list) rather than by running commands.
package sysinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Info is the system's facts. Memory is in bytes.
type Info struct {
	KernelVersion   string
	OSName          string
	OSVersion       string
	Arch            string
	Hostname        string
	TotalMemory     uint64
	AvailableMemory uint64
	CPUCount        int
	LoadAverage     [3]float64
	Uptime          time.Duration
	IPAddresses     []string
}

// Uname is the part of uname(2) the agent reports.
type Uname struct {
	Sysname, Nodename, Release, Version, Machine string
}

// Source says where facts come from. The zero value reads the real
// machine; tests point ProcRoot at fixtures and replace the functions.
type Source struct {
	ProcRoot string                     // "" means /proc
	Uname    func() (Uname, error)      // nil means uname(2)
	Addrs    func() ([]net.Addr, error) // nil means net.InterfaceAddrs
	CPUCount func() int                 // nil means runtime.NumCPU
}

// Collect gathers the facts; an error names what could not be read.
func (s Source) Collect() (Info, error) {
	proc := s.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	unameFn, addrsFn, cpuFn := s.Uname, s.Addrs, s.CPUCount
	if unameFn == nil {
		unameFn = uname
	}
	if addrsFn == nil {
		addrsFn = net.InterfaceAddrs
	}
	if cpuFn == nil {
		cpuFn = runtime.NumCPU
	}

	var info Info
	var errs []error
	if u, err := unameFn(); err != nil {
		errs = append(errs, fmt.Errorf("uname: %w", err))
	} else {
		info.KernelVersion, info.OSName, info.OSVersion = u.Release, u.Sysname, u.Version
		info.Arch, info.Hostname = u.Machine, u.Nodename
	}
	if err := readMeminfo(filepath.Join(proc, "meminfo"), &info); err != nil {
		errs = append(errs, err)
	}
	if err := readLoadavg(filepath.Join(proc, "loadavg"), &info); err != nil {
		errs = append(errs, err)
	}
	if err := readUptime(filepath.Join(proc, "uptime"), &info); err != nil {
		errs = append(errs, err)
	}
	info.CPUCount = cpuFn()
	addrs, err := addrsFn()
	if err != nil {
		errs = append(errs, fmt.Errorf("interface addresses: %w", err))
	}
	info.IPAddresses = FilterAddresses(addrs)
	return info, errors.Join(errs...)
}

// FilterAddresses returns the addresses' IPs in order, without loopback,
// IPv6 link-local, unspecified, or duplicates (as `hostname -I` does).
func FilterAddresses(addrs []net.Addr) []string {
	ips := []string{}
	seen := map[string]bool{}
	for _, a := range addrs {
		var ip net.IP
		switch v := a.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		default:
			ip = net.ParseIP(strings.SplitN(a.String(), "/", 2)[0])
		}
		if ip == nil || ip.IsLoopback() || ip.IsLinkLocalUnicast() && ip.To4() == nil || ip.IsUnspecified() {
			continue
		}
		s := ip.String()
		if !seen[s] {
			seen[s] = true
			ips = append(ips, s)
		}
	}
	return ips
}

func readMeminfo(path string, info *Info) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if info.TotalMemory, info.AvailableMemory, err = parseMeminfo(data); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// parseMeminfo returns MemTotal and MemAvailable, in bytes, from
// /proc/meminfo's "Key:   N kB" lines. Other lines are not looked at, so a
// field the agent does not report cannot fail it.
func parseMeminfo(data []byte) (total, avail uint64, err error) {
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, rest, _ := strings.Cut(sc.Text(), ":")
		var dst *uint64
		switch key {
		case "MemTotal":
			dst, haveTotal = &total, true
		case "MemAvailable":
			dst, haveAvail = &avail, true
		default:
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, 0, fmt.Errorf("%s: %q is not a size in kB", key, strings.TrimSpace(rest))
		}
		kb, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil || kb > math.MaxInt64/1024 { // the API's sizes are int64 bytes
			return 0, 0, fmt.Errorf("%s: %q is not a size in kB", key, fields[0])
		}
		*dst = kb * 1024
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if !haveTotal || !haveAvail {
		return 0, 0, errors.New("no MemTotal or MemAvailable line")
	}
	return total, avail, nil
}

func readLoadavg(path string, info *Info) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if info.LoadAverage, err = parseLoadavg(data); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// parseLoadavg returns the 1, 5 and 15 minute load averages of
// /proc/loadavg ("0.52 0.25 0.10 1/234 5678"): finite and not negative,
// as JSON can carry and a load can be.
func parseLoadavg(data []byte) ([3]float64, error) {
	var loads [3]float64
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return loads, fmt.Errorf("want 3 load averages, got %q", data)
	}
	for i, name := range []string{"1", "5", "15"} {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return loads, fmt.Errorf("%s minute load average %q is not a non-negative number", name, fields[i])
		}
		loads[i] = v
	}
	return loads, nil
}

func readUptime(path string, info *Info) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if info.Uptime, err = parseUptime(data); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// parseUptime returns the first number of /proc/uptime ("12345.67
// 2345.00"), the seconds since boot.
func parseUptime(data []byte) (time.Duration, error) {
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return 0, errors.New("empty")
	}
	secs, err := strconv.ParseFloat(fields[0], 64)
	// NaN fails both comparisons. A Duration holds 292 years; the bound,
	// 272, keeps the conversion below clear of float rounding.
	const maxSecs = 1 << 33
	if err != nil || !(secs >= 0 && secs < maxSecs) {
		return 0, fmt.Errorf("uptime %q is not a number of seconds", fields[0])
	}
	return time.Duration(secs * float64(time.Second)), nil
}
