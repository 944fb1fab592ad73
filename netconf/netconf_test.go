package netconf

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunIsolated(m)) }

func TestParseAddress(t *testing.T) {
	a, err := ParseAddress("eth0=10.0.2.15/24")
	if err != nil || a.Interface != "eth0" || a.Prefix != netip.MustParsePrefix("10.0.2.15/24") {
		t.Errorf("got %v %v", a, err)
	}
	for _, bad := range []string{"eth0", "=10.0.0.1/8", "eth0=10.0.0.1", "eth0=fd00::1/64", "a very long interface=1.2.3.4/8",
		".=1.2.3.4/8", "eth0:1=1.2.3.4/8", "eth\t0=1.2.3.4/8", "eth\x000=1.2.3.4/8"} {
		if _, err := ParseAddress(bad); err == nil || !strings.Contains(err.Error(), strconv.Quote(bad)) {
			t.Errorf("ParseAddress(%q) = %v, want an error naming it", bad, err)
		}
	}
}

func TestConfigureWaitsForTheInterface(t *testing.T) {
	dir := t.TempDir()
	var calls []string
	c := Configurator{Exists: func(i string) bool { _, err := os.Stat(dir + "/" + i); return err == nil },
		SetAddress: func(i string, p netip.Prefix) error { calls = append(calls, "addr "+i+" "+p.String()); return nil },
		Up:         func(i string) error { calls = append(calls, "up "+i); return nil },
	}
	go func() { _ = os.Mkdir(dir+"/eth0", 0o755) }() // the driver's probe finishes a moment later
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Configure(ctx, []Address{{"eth0", netip.MustParsePrefix("10.0.2.15/24")}}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(calls, ",") != "up lo,addr eth0 10.0.2.15/24,up eth0" {
		t.Errorf("calls %v", calls)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := c.Configure(ctx, []Address{{"eth9", netip.MustParsePrefix("10.0.2.15/24")}}); err == nil || !strings.Contains(err.Error(), "eth9 did not appear") {
		t.Errorf("missing interface: %v", err)
	}
}

// TestSystemConfiguresAVeth gives a real interface an address, in the
// test's own network namespace.
func TestSystemConfiguresAVeth(t *testing.T) {
	testenv.RequireIsolated(t)
	ip := testenv.RequireBinary(t, "ip")
	if out, err := exec.Command(ip, "link", "add", "ab0", "type", "veth", "peer", "name", "ab1").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v\n%s", err, out)
	}
	defer func() { _ = exec.Command(ip, "link", "del", "ab0").Run() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := System.Configure(ctx, []Address{{"ab0", netip.MustParsePrefix("10.77.0.2/24")}}); err != nil {
		t.Fatal(err)
	}
	ifc, err := net.InterfaceByName("ab0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := ifc.Addrs()
	if len(addrs) != 1 || addrs[0].String() != "10.77.0.2/24" || ifc.Flags&net.FlagUp == 0 {
		t.Errorf("ab0: %v flags %v", addrs, ifc.Flags)
	}
	lo, _ := net.InterfaceByName("lo")
	if lo.Flags&net.FlagUp == 0 {
		t.Error("lo is down")
	}
}
