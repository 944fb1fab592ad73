package sysinfo

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func mustCIDR(t *testing.T, s string) net.Addr {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func TestCollectFromFixtures(t *testing.T) {
	src := Source{
		ProcRoot: "testdata/proc",
		Uname: func() (Uname, error) {
			return Uname{Sysname: "Linux", Nodename: "vm", Release: "6.1.0-cloud", Version: "#1 SMP", Machine: "x86_64"}, nil
		},
		Addrs: func() ([]net.Addr, error) {
			return []net.Addr{
				mustCIDR(t, "127.0.0.1/8"), mustCIDR(t, "::1/128"),
				mustCIDR(t, "192.168.64.3/24"), mustCIDR(t, "fe80::1/64"),
				mustCIDR(t, "fd00::3/64"), mustCIDR(t, "192.168.64.3/24"),
			}, nil
		},
		CPUCount: func() int { return 4 },
	}
	got, err := src.Collect()
	if err != nil {
		t.Fatal(err)
	}
	want := Info{
		KernelVersion: "6.1.0-cloud", OSName: "Linux", OSVersion: "#1 SMP", Arch: "x86_64", Hostname: "vm",
		TotalMemory: 24576000 * 1024, AvailableMemory: 20480000 * 1024, CPUCount: 4,
		LoadAverage: [3]float64{0.52, 0.25, 0.10},
		Uptime:      time.Duration(12345.67 * float64(time.Second)),
		IPAddresses: []string{"192.168.64.3", "fd00::3"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestCollectNamesWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "loadavg"), []byte("0 0 0 1/1 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Source{ProcRoot: dir}.Collect()
	if err == nil {
		t.Fatal("want an error for the missing meminfo and uptime")
	}
	for _, name := range []string{"meminfo", "uptime"} {
		if !strings.Contains(err.Error(), filepath.Join(dir, name)) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}

func TestCollectRealMachine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads Linux's /proc")
	}
	got, err := Source{}.Collect()
	if err != nil {
		t.Fatal(err)
	}
	if got.KernelVersion == "" || got.TotalMemory == 0 || got.CPUCount != runtime.NumCPU() || got.Uptime <= 0 {
		t.Errorf("implausible facts: %+v", got)
	}
	for _, ip := range got.IPAddresses {
		if net.ParseIP(ip).IsLoopback() {
			t.Errorf("loopback address %s reported", ip)
		}
	}
}

func TestParsersRejectWhatTheAPICannotCarry(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"NaN load", second(parseLoadavg([]byte("NaN 0 0 1/1 1"))), "1 minute load average"},
		{"infinite load", second(parseLoadavg([]byte("0 +Inf 0 1/1 1"))), "5 minute load average"},
		{"negative load", second(parseLoadavg([]byte("0 0 -1 1/1 1"))), "15 minute load average"},
		{"NaN uptime", second(parseUptime([]byte("NaN 0"))), "uptime"},
		{"uptime past a Duration", second(parseUptime([]byte("92233720368.55 0"))), "uptime"},
		{"memory past int64", third(parseMeminfo([]byte("MemTotal: 9007199254740992 kB\nMemAvailable: 1 kB\n"))), "MemTotal"},
		{"memory not in kB", third(parseMeminfo([]byte("MemTotal: 1 kB\nMemAvailable: 1 MB\n"))), "MemAvailable"},
	} {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one naming %q", tt.name, tt.err, tt.want)
		}
	}
	if _, _, err := parseMeminfo([]byte("Odd: x\nMemTotal: 2 kB\nMemAvailable: 1 kB\n")); err != nil {
		t.Errorf("a line the agent does not report failed the parse: %v", err)
	}
}

func second[T any](_ T, err error) error { return err }

func third[T, U any](_ T, _ U, err error) error { return err }
