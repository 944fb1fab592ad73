package netconf

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzParseAddress checks IFACE=ADDRESS/BITS parsing (from a flag, the
// environment or the kernel command line) never panics, rejects with an
// error quoting the input, accepts only names the kernel accepts and IPv4
// prefixes, and that what it accepts prints back to itself.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"eth0=10.0.2.15/24", "enp0s1=192.168.64.3/32", "lo=127.0.0.1/8", "eth0.100=10.1.0.1/30",
		"verylonginterf1=1.2.3.4/0", "verylonginterfa2=1.2.3.4/8", // 15 and 16 bytes
		"eth0=10.0.2.15", "eth0=fd00::1/64", "eth0=::ffff:10.0.2.15/120", "eth0=010.0.2.15/24", "eth0=10.0.2.15/024",
		"eth0=10.0.2.15/33", "eth0=10.0.2.15/-1", "=10.0.0.1/8", "eth0", "eth0==10.0.0.1/8", "a=b=1.2.3.4/8",
		".=1.2.3.4/8", "..=1.2.3.4/8", "...=1.2.3.4/8", "eth:0=1.2.3.4/8", "eth/0=1.2.3.4/8", "eth 0=1.2.3.4/8",
		"eth\t0=1.2.3.4/8", "eth\x000=1.2.3.4/8", "eth\xa0=1.2.3.4/8", "ethé=1.2.3.4/8", "eth0=1.2.3.4/8\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Fatalf("error %q does not quote the input %q", err, s)
			}
			return
		}
		if !ValidInterfaceName(a.Interface) || strings.Contains(a.Interface, "=") {
			t.Fatalf("%q: accepted interface name %q", s, a.Interface)
		}
		if !a.Prefix.IsValid() || !a.Prefix.Addr().Is4() {
			t.Fatalf("%q: accepted prefix %v", s, a.Prefix)
		}
		again, err := ParseAddress(a.String())
		if err != nil || again != a {
			t.Fatalf("%q parsed to %v, which parses to %v, %v", s, a, again, err)
		}
	})
}
