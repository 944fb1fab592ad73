package network

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

func newTestManager(t *testing.T, cidr string) *Manager {
	t.Helper()
	m, err := New(testConfig(cidr))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAllocateLowestFreeAndIdempotent(t *testing.T) {
	m := newTestManager(t, "172.20.0.0/16")
	want := func(id, addr string) {
		t.Helper()
		got, err := m.Allocate(id)
		if err != nil {
			t.Fatalf("Allocate(%q): %v", id, err)
		}
		if got != netip.MustParseAddr(addr) {
			t.Fatalf("Allocate(%q): got %v, want %v", id, got, addr)
		}
	}
	want("a", "172.20.0.2")
	want("b", "172.20.0.3")
	want("a", "172.20.0.2") // the same id gets its address again
	want("c", "172.20.0.4")
	m.Release("b")
	want("d", "172.20.0.3") // the lowest free one
	want("e", "172.20.0.5")
	m.Release("nobody") // no-op
	m.Release("a")
	m.Release("a")
	want("f", "172.20.0.2")
}

func TestAllocateCrossesOctets(t *testing.T) {
	m := newTestManager(t, "10.1.0.0/23")
	seen := map[netip.Addr]bool{}
	for i := range 509 { // 512 - network, gateway, broadcast
		a, err := m.Allocate(fmt.Sprint(i))
		if err != nil {
			t.Fatalf("Allocate #%d: %v", i, err)
		}
		if seen[a] || !m.Prefix().Contains(a) || a == m.Gateway() {
			t.Fatalf("Allocate #%d: got %v, a duplicate or not a sandbox address", i, a)
		}
		seen[a] = true
	}
	if _, err := m.Allocate("one-too-many"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate past the end: got %v, want ErrExhausted", err)
	}
	if seen[netip.MustParseAddr("10.1.1.255")] || !seen[netip.MustParseAddr("10.1.1.0")] {
		t.Fatal("the broadcast address was handed out, or 10.1.1.0 was skipped")
	}
}

func TestAllocateExhaustedNamesRange(t *testing.T) {
	m := newTestManager(t, "192.168.7.4/30")
	a, err := m.Allocate("only")
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddr("192.168.7.6"); a != want {
		t.Fatalf("Allocate: got %v, want %v", a, want)
	}
	_, err = m.Allocate("second")
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "192.168.7.4/30") {
		t.Fatalf("Allocate on a full /30: got %v, want ErrExhausted naming 192.168.7.4/30", err)
	}
	m.Release("only")
	if a2, err := m.Allocate("second"); err != nil || a2 != a {
		t.Fatalf("Allocate after Release: got %v, %v, want %v", a2, err, a)
	}
}

func TestAllocateConcurrentNoDuplicates(t *testing.T) {
	m := newTestManager(t, "172.20.0.0/16")
	const n = 1000
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { addrs[i], errs[i] = m.Allocate(fmt.Sprintf("sb-%d", i)) })
	}
	wg.Wait()
	seen := make(map[netip.Addr]int, n)
	for i, a := range addrs {
		if errs[i] != nil {
			t.Fatalf("Allocate sb-%d: %v", i, errs[i])
		}
		if j, dup := seen[a]; dup {
			t.Fatalf("sb-%d and sb-%d both got %v", j, i, a)
		}
		seen[a] = i
	}
	// They took exactly the n lowest addresses.
	lo, hi := u32(netip.MustParseAddr("172.20.0.2")), u32(netip.MustParseAddr("172.20.0.2"))+n-1
	for a := range seen {
		if v := u32(a); v < lo || v > hi {
			t.Fatalf("%v is not among the %d lowest addresses", a, n)
		}
	}
}

func TestReserve(t *testing.T) {
	m := newTestManager(t, "172.20.0.0/16")
	addr := netip.MustParseAddr("172.20.0.3")
	if err := m.Reserve("a", addr); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if err := m.Reserve("a", addr); err != nil {
		t.Fatalf("Reserve again: got %v, want nil", err)
	}
	if got, err := m.Allocate("a"); err != nil || got != addr {
		t.Fatalf("Allocate after Reserve: got %v, %v, want %v", got, err, addr)
	}
	// Allocate skips the reserved address.
	for _, want := range []string{"172.20.0.2", "172.20.0.4"} {
		if got, err := m.Allocate("x" + want); err != nil || got != netip.MustParseAddr(want) {
			t.Fatalf("Allocate: got %v, %v, want %v", got, err, want)
		}
	}

	bad := []struct {
		id, addr string
		class    error
		want     string
	}{
		{"b", "172.20.0.3", ErrConflict, `held by sandbox "a"`},
		{"a", "172.20.0.9", ErrConflict, "holds 172.20.0.3"},
		{"b", "172.21.0.3", ErrInvalid, "outside 172.20.0.0/16"},
		{"b", "172.20.0.0", ErrInvalid, "network address"},
		{"b", "172.20.0.1", ErrInvalid, "gateway"},
		{"b", "172.20.255.255", ErrInvalid, "broadcast"},
		{"b", "::ffff:172.20.0.9", ErrInvalid, "outside"},
		{"", "172.20.0.9", ErrInvalid, "empty"},
		{"../etc", "172.20.0.9", ErrInvalid, "file name"},
	}
	for _, tt := range bad {
		err := m.Reserve(tt.id, netip.MustParseAddr(tt.addr))
		if !errors.Is(err, tt.class) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Reserve(%q, %s): got %v, want %v containing %q", tt.id, tt.addr, err, tt.class, tt.want)
		}
	}

	m.Release("a")
	if err := m.Reserve("b", addr); err != nil {
		t.Fatalf("Reserve after Release: %v", err)
	}
}
