package network

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func testConfig(cidr string) Config {
	return Config{CIDR: netip.MustParsePrefix(cidr), NetnsDir: "/run/arcbox/netns"}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // in the error; "" for success
	}{
		{"ok /16", testConfig("172.20.0.0/16"), ""},
		{"ok /8", testConfig("10.0.0.0/8"), ""},
		{"ok /30", testConfig("192.168.7.4/30"), ""},
		{"missing CIDR", Config{NetnsDir: "/x"}, "missing"},
		{"IPv6", testConfig("fd00::/64"), "not an IPv4"},
		{"4in6", testConfig("::ffff:172.20.0.0/112"), "not an IPv4"},
		{"too wide", testConfig("10.0.0.0/7"), "from /8 to /30"},
		{"too narrow", testConfig("10.0.0.0/31"), "from /8 to /30"},
		{"host bits", testConfig("172.20.0.5/16"), "the range is 172.20.0.0/16"},
		{"loopback", testConfig("127.0.0.0/8"), "loopback"},
		{"multicast", testConfig("239.1.0.0/16"), "multicast"},
		{"zero net", testConfig("0.0.0.0/8"), "0.0.0.0/8"},
		{"no netns dir", Config{CIDR: netip.MustParsePrefix("172.20.0.0/16")}, "NetnsDir: required"},
		{"relative netns dir", Config{CIDR: netip.MustParsePrefix("172.20.0.0/16"), NetnsDir: "netns"}, "absolute"},
		{"long bridge", Config{CIDR: netip.MustParsePrefix("172.20.0.0/16"), NetnsDir: "/x", Bridge: "abcdefghijklmnop"}, "longer than 15"},
		{"bad bridge", Config{CIDR: netip.MustParsePrefix("172.20.0.0/16"), NetnsDir: "/x", Bridge: "br/0"}, "not a valid name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("New(%+v) = %v, want an error containing %q", tt.cfg, m, tt.want)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: got %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	m, err := New(Config{CIDR: netip.MustParsePrefix("172.20.0.0/16"), NetnsDir: "/run/arcbox/netns/"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Gateway(), netip.MustParseAddr("172.20.0.1"); got != want {
		t.Errorf("Gateway: got %v, want %v", got, want)
	}
	if got, want := m.Prefix(), netip.MustParsePrefix("172.20.0.0/16"); got != want {
		t.Errorf("Prefix: got %v, want %v", got, want)
	}
	if got := m.Bridge(); got != DefaultBridge {
		t.Errorf("Bridge: got %q, want %q", got, DefaultBridge)
	}
	if got, want := m.NetnsPath("sb1"), "/run/arcbox/netns/sb1"; got != want {
		t.Errorf("NetnsPath: got %q, want %q", got, want)
	}
	if m.cfg.ResolvConf != DefaultResolvConf {
		t.Errorf("ResolvConf: got %q, want %q", m.cfg.ResolvConf, DefaultResolvConf)
	}
}

func TestHostIfName(t *testing.T) {
	a, b := HostIfName("sandbox-a"), HostIfName("sandbox-b")
	if a == b {
		t.Fatalf("HostIfName gives %q to two ids", a)
	}
	if a != HostIfName("sandbox-a") {
		t.Fatal("HostIfName is not deterministic")
	}
	long := HostIfName(strings.Repeat("x", 255))
	for _, n := range []string{a, b, long} {
		if len(n) != 13 || !strings.HasPrefix(n, "vsb") || validIfName(n) != nil {
			t.Errorf("HostIfName: got %q, want vsb and 10 hex digits", n)
		}
	}
}
