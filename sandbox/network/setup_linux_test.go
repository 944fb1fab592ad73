package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// newPrivilegedManager returns a Manager whose namespaces live in a fresh
// directory; every test uses its own bridge and range.
func newPrivilegedManager(t *testing.T, cidr, bridge string) *Manager {
	t.Helper()
	testenv.RequireIsolated(t)
	m, err := New(Config{
		CIDR:     netip.MustParsePrefix(cidr),
		Bridge:   bridge,
		NetnsDir: filepath.Join(t.TempDir(), "netns"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(bridge); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete bridge %s: %v", bridge, err)
			}
		}
		deleteTable(t, m.EgressTable())
	})
	return m
}

// teardown is Teardown for t.Cleanup.
func teardown(t *testing.T, m *Manager, id string) {
	if err := m.Teardown(id); err != nil {
		t.Errorf("Teardown(%q): %v", id, err)
	}
}

// inNetns runs fn on a fresh OS thread that has joined the namespace at path.
// The thread stays locked and dies with its goroutine, so the test's own
// threads never change namespace. Sockets fn opens stay in that namespace.
func inNetns(path string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is abandoned
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- fmt.Errorf("open %s: %w", path, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			done <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// handleIn returns a netlink handle bound to the namespace at path.
func handleIn(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	err := inNetns(path, func() (err error) {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", path, err)
	}
	t.Cleanup(h.Close)
	return h
}

// listenIn opens a TCP listener in the namespace at path.
func listenIn(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := inNetns(path, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", path, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// mountedAt reports whether anything is mounted at path.
func mountedAt(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == path {
			return true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return false
}

// echoOnce accepts one connection on ln and writes back one line it reads.
func echoOnce(ln net.Listener) <-chan error {
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil {
			_, err = io.WriteString(c, line)
		}
		done <- err
	}()
	return done
}

// roundTrip dials addr with dial, sends a line and checks it comes back.
func roundTrip(t *testing.T, what string, dial func() (net.Conn, error), ln net.Listener) {
	t.Helper()
	served := echoOnce(ln)
	c, err := dial()
	if err != nil {
		t.Fatalf("%s: dial: %v", what, err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "hello\n" {
		t.Fatalf("%s: read back %q, %v", what, got, err)
	}
	if err := <-served; err != nil {
		t.Fatalf("%s: server: %v", what, err)
	}
}

func TestSetupTeardown(t *testing.T) {
	m := newPrivilegedManager(t, "172.20.0.0/16", "arcboxt0")
	ids := []string{"sandbox-one", "sandbox-two"}
	eps := make([]Endpoint, len(ids))
	for _, id := range ids {
		if _, err := m.Allocate(id); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { teardown(t, m, id) })
	}

	// Both at once: they race to create the bridge.
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i, id := range ids {
		addr, _ := m.Allocate(id)
		wg.Go(func() { eps[i], errs[i] = m.Setup(context.Background(), id, addr) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Setup: %v", err)
	}

	bridge, err := netlink.LinkByName("arcboxt0")
	if err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if bridge.Attrs().Flags&net.FlagUp == 0 {
		t.Error("bridge is down")
	}
	addrs, err := netlink.AddrList(bridge, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "172.20.0.1/16" {
		t.Errorf("bridge addresses: got %v, %v, want 172.20.0.1/16", addrs, err)
	}

	for i, id := range ids {
		ep := eps[i]
		wantAddr, _ := m.Allocate(id)
		want := Endpoint{
			NetnsPath: filepath.Join(m.cfg.NetnsDir, id),
			Address:   netip.PrefixFrom(wantAddr, 16),
			Gateway:   netip.MustParseAddr("172.20.0.1"),
			HostIf:    HostIfName(id),
		}
		if ep != want {
			t.Fatalf("Setup(%q): got %+v, want %+v", id, ep, want)
		}

		var st unix.Statfs_t
		if err := unix.Statfs(ep.NetnsPath, &st); err != nil || st.Type != unix.NSFS_MAGIC {
			t.Fatalf("%s: got statfs type %#x, %v, want nsfs", ep.NetnsPath, st.Type, err)
		}
		if fi, err := os.Stat(m.cfg.NetnsDir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("NetnsDir: got %v, %v, want mode 0700", fi.Mode(), err)
		}

		host, err := netlink.LinkByName(ep.HostIf)
		if err != nil {
			t.Fatalf("host veth: %v", err)
		}
		if a := host.Attrs(); a.Alias != id || a.MasterIndex != bridge.Attrs().Index || a.Flags&net.FlagUp == 0 || host.Type() != "veth" {
			t.Errorf("host veth %s: alias %q, master %d, flags %v, type %s; want alias %q, master %d, up, veth",
				ep.HostIf, a.Alias, a.MasterIndex, a.Flags, host.Type(), id, bridge.Attrs().Index)
		}

		h := handleIn(t, ep.NetnsPath)
		eth, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatalf("eth0 in %s: %v", id, err)
		}
		if eth.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("eth0 in %s is down", id)
		}
		inAddrs, err := h.AddrList(eth, netlink.FAMILY_V4)
		if err != nil || len(inAddrs) != 1 || inAddrs[0].IPNet.String() != ep.Address.String() {
			t.Errorf("eth0 in %s: got addresses %v, %v, want %v", id, inAddrs, err, ep.Address)
		}
		if lo, err := h.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("lo in %s: not up (%v)", id, err)
		}
		routes, err := h.RouteList(eth, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		hasDefault := false
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(net.ParseIP("172.20.0.1")) {
				hasDefault = true
			}
		}
		if !hasDefault {
			t.Errorf("%s: no default route via 172.20.0.1 in %v", id, routes)
		}
	}

	// The host reaches each sandbox at its address.
	lns := make([]net.Listener, len(ids))
	for i, ep := range eps {
		lns[i] = listenIn(t, ep.NetnsPath, "0.0.0.0:0")
		target := netip.AddrPortFrom(ep.Address.Addr(), uint16(lns[i].Addr().(*net.TCPAddr).Port))
		roundTrip(t, "host to "+ids[i], func() (net.Conn, error) { return net.Dial("tcp4", target.String()) }, lns[i])
	}
	// One sandbox reaches the other through the bridge.
	target := netip.AddrPortFrom(eps[1].Address.Addr(), uint16(lns[1].Addr().(*net.TCPAddr).Port))
	roundTrip(t, "sandbox to sandbox", func() (c net.Conn, err error) {
		err = inNetns(eps[0].NetnsPath, func() error {
			c, err = net.Dial("tcp4", target.String())
			return err
		})
		return c, err
	}, lns[1])

	// Setting up a sandbox twice is a conflict, and leaves the first alone.
	if _, err := m.Setup(context.Background(), ids[0], eps[0].Address.Addr()); !errors.Is(err, ErrConflict) {
		t.Fatalf("second Setup: got %v, want ErrConflict", err)
	}
	if !mountedAt(t, eps[0].NetnsPath) {
		t.Fatal("a failed second Setup undid the first")
	}

	for i, id := range ids {
		lns[i].Close()
		if err := m.Teardown(id); err != nil {
			t.Fatalf("Teardown(%q): %v", id, err)
		}
		ep := eps[i]
		var notFound netlink.LinkNotFoundError
		if _, err := netlink.LinkByName(ep.HostIf); !errors.As(err, &notFound) {
			t.Errorf("after Teardown, host veth %s: got %v, want not found", ep.HostIf, err)
		}
		if _, err := os.Lstat(ep.NetnsPath); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Teardown, %s: got %v, want it gone", ep.NetnsPath, err)
		}
		if mountedAt(t, ep.NetnsPath) {
			t.Errorf("after Teardown, something is still mounted at %s", ep.NetnsPath)
		}
		if err := m.Teardown(id); err != nil {
			t.Errorf("second Teardown(%q): got %v, want nil", id, err)
		}
		if got, err := m.Allocate(id); err != nil || got != ep.Address.Addr() {
			t.Errorf("after Teardown, %q holds %v, %v; want %v kept", id, got, err, ep.Address.Addr())
		}
	}
}

func TestSetupUsesExistingBridge(t *testing.T) {
	m := newPrivilegedManager(t, "10.77.0.0/24", "arcboxt1")
	// A bridge made by someone else, down and without an address.
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "arcboxt1"}}); err != nil {
		t.Fatal(err)
	}
	addr, err := m.Allocate("sb")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := m.Setup(context.Background(), "sb", addr)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { teardown(t, m, "sb") })
	br, err := netlink.LinkByName("arcboxt1")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.1/24" || br.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("bridge: got addresses %v (%v), flags %v; want 10.77.0.1/24, up", addrs, err, br.Attrs().Flags)
	}
	if err := m.Teardown("sb"); err != nil {
		t.Fatal(err)
	}
	// Again, now that the bridge has its address.
	if _, err := m.Setup(context.Background(), "sb", addr); err != nil {
		t.Fatalf("Setup on a ready bridge: %v (endpoint before: %+v)", err, ep)
	}
}

func TestSetupRejectsWrongBridgeAddress(t *testing.T) {
	m := newPrivilegedManager(t, "10.78.0.0/24", "arcboxt2")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "arcboxt2"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	ipn := &net.IPNet{IP: net.ParseIP("10.78.0.1"), Mask: net.CIDRMask(16, 32)}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipn}); err != nil {
		t.Fatal(err)
	}
	addr, _ := m.Allocate("sb")
	if _, err := m.Setup(context.Background(), "sb", addr); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "arcboxt2") {
		t.Fatalf("Setup with the gateway at /16 on the bridge: got %v, want ErrConflict naming the bridge", err)
	}
	if _, err := os.Lstat(m.NetnsPath("sb")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("netns file after a failed Setup: %v, want none", err)
	}
}

func TestSetupUndoesOnFailure(t *testing.T) {
	m := newPrivilegedManager(t, "10.79.0.0/24", "arcboxt3")
	id := "sb-undo"
	addr, _ := m.Allocate(id)
	// A link already holds the host veth's name: creating the veth fails
	// after the namespace was made.
	squatter := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: HostIfName(id)}}
	if err := netlink.LinkAdd(squatter); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(squatter); err != nil {
			t.Errorf("delete %s: %v", squatter.Name, err)
		}
	})

	_, err := m.Setup(context.Background(), id, addr)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), HostIfName(id)) {
		t.Fatalf("Setup: got %v, want ErrConflict naming %s", err, HostIfName(id))
	}
	path := m.NetnsPath(id)
	if mountedAt(t, path) {
		t.Errorf("after a failed Setup, something is mounted at %s", path)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a failed Setup, %s: got %v, want it gone", path, err)
	}
	if _, err := netlink.LinkByName(HostIfName(id)); err != nil {
		t.Errorf("a failed Setup removed a link it did not make: %v", err)
	}
}

func TestSetupRefuses(t *testing.T) {
	m := newPrivilegedManager(t, "10.80.0.0/24", "arcboxt4")
	ctx := context.Background()
	if _, err := m.Setup(ctx, "sb", netip.MustParseAddr("10.80.0.2")); !errors.Is(err, ErrConflict) {
		t.Errorf("Setup of an address not held: got %v, want ErrConflict", err)
	}
	a, _ := m.Allocate("a")
	if _, err := m.Setup(ctx, "b", a); !errors.Is(err, ErrConflict) {
		t.Errorf("Setup of another sandbox's address: got %v, want ErrConflict", err)
	}
	if _, err := m.Setup(ctx, "a", netip.MustParseAddr("10.80.1.2")); !errors.Is(err, ErrInvalid) {
		t.Errorf("Setup of an address outside the range: got %v, want ErrInvalid", err)
	}
	if err := m.Teardown("../x"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Teardown of a bad id: got %v, want ErrInvalid", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.Setup(cancelled, "a", a); !errors.Is(err, context.Canceled) {
		t.Errorf("Setup with a cancelled context: got %v, want context.Canceled", err)
	}
	if _, err := os.Lstat(m.NetnsPath("a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns file after refused Setups: %v, want none", err)
	}
}

// cancelAfter is a context that reports cancellation from its n-th Err call
// on: Setup checks Err between steps, so it stops at a chosen step.
type cancelAfter struct {
	context.Context
	mu sync.Mutex
	n  int
}

func (c *cancelAfter) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n--
	if c.n <= 0 {
		return context.Canceled
	}
	return nil
}

func TestSetupUndoesAfterVeth(t *testing.T) {
	m := newPrivilegedManager(t, "10.81.0.0/24", "arcboxt5")
	id := "sb-late"
	addr, _ := m.Allocate(id)
	// Err is checked before the bridge, after the namespace, and after the
	// veth's host end is attached: fail at the third.
	ctx := &cancelAfter{Context: context.Background(), n: 3}
	if _, err := m.Setup(ctx, id, addr); !errors.Is(err, context.Canceled) {
		t.Fatalf("Setup: got %v, want context.Canceled", err)
	}
	if ctx.n != 0 {
		t.Fatalf("Setup stopped at its check #%d, want #3 (after the veth)", 3-ctx.n)
	}
	var notFound netlink.LinkNotFoundError
	if _, err := netlink.LinkByName(HostIfName(id)); !errors.As(err, &notFound) {
		t.Errorf("after a failed Setup, veth %s: got %v, want it gone", HostIfName(id), err)
	}
	path := m.NetnsPath(id)
	if mountedAt(t, path) {
		t.Errorf("after a failed Setup, something is mounted at %s", path)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a failed Setup, %s: got %v, want it gone", path, err)
	}
	// The undo left nothing in the way.
	if _, err := m.Setup(context.Background(), id, addr); err != nil {
		t.Fatalf("Setup after the failed one: %v", err)
	}
	if err := m.Teardown(id); err != nil {
		t.Fatal(err)
	}
}
