// Package sysinfo collects facts about the guest system: kernel, memory,
// CPUs, load, uptime and addresses, from the kernel's interfaces (uname,
// /proc, the interface list) rather than by running commands.
package sysinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
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
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		kb, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", path, key, err)
		}
		switch key {
		case "MemTotal":
			info.TotalMemory, haveTotal = kb*1024, true
		case "MemAvailable":
			info.AvailableMemory, haveAvail = kb*1024, true
		}
	}
	if !haveTotal || !haveAvail {
		return fmt.Errorf("%s: no MemTotal or MemAvailable line", path)
	}
	return nil
}

func readLoadavg(path string, info *Info) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return fmt.Errorf("%s: want 3 load averages, got %q", path, data)
	}
	for i := range 3 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		info.LoadAverage[i] = v
	}
	return nil
}

func readUptime(path string, info *Info) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return fmt.Errorf("%s: empty", path)
	}
	secs, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	info.Uptime = time.Duration(secs * float64(time.Second))
	return nil
}
