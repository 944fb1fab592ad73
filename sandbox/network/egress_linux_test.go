package network

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The rules' invariant: the table concerns the sandboxes' traffic only.
// Every filter rule names the bridge as the input or output interface,
// but the drops for uplinks whose forwarding is on for the sandboxes'
// sake; the NAT rule takes only sources in the range.
func TestEgressRulesConcernOnlyTheSandboxes(t *testing.T) {
	for _, notRouters := range [][]string{nil, {"up0", "up1"}} {
		p := egressPlan{table: "arcbox-br0", bridge: "br0", cidr: netip.MustParsePrefix("10.1.0.0/16"), notRouters: notRouters}
		byChain := map[string][]nftRule{}
		for _, r := range p.rules() {
			byChain[r.chain] = append(byChain[r.chain], r)
			if r.comment == "" {
				t.Errorf("a rule of %s has no comment", r.chain)
			}
		}
		if n := len(byChain[chainPostrouting]); n != 1 {
			t.Fatalf("postrouting has %d rules, want 1", n)
		}
		nat := byChain[chainPostrouting][0].exprs
		if !hasExpr(nat, &expr.Masq{}) || !hasSeq(nat, ipv4Saddr(p.cidr)) || !hasSeq(nat, ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, "br0")) {
			t.Errorf("the NAT rule is not `ip saddr 10.1.0.0/16 oifname != br0 masquerade`: %v", describe(nat))
		}
		routerDrops := 0
		for _, chain := range []string{chainForward, chainInput} {
			for _, r := range byChain[chain] {
				if hasSeq(r.exprs, ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, "br0")) || hasSeq(r.exprs, ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, "br0")) {
					continue
				}
				isRouterDrop := chain == chainForward && slices.ContainsFunc(notRouters, func(u string) bool {
					return slices.EqualFunc(r.exprs, cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, u), counted(verdict(expr.VerdictDrop)...)), exprEqual)
				})
				if !isRouterDrop {
					t.Errorf("%s rule %q does not name the bridge: %v", chain, r.comment, describe(r.exprs))
				}
				routerDrops++
			}
		}
		if routerDrops != len(notRouters) {
			t.Errorf("notRouters %v: %d drops for them, want one each", notRouters, routerDrops)
		}
		// The drops for uplinks come after the replies to the sandboxes.
		forward := byChain[chainForward]
		replies := slices.IndexFunc(forward, func(r nftRule) bool { return r.comment == "replies to the sandboxes" })
		for i, r := range forward {
			if strings.HasPrefix(r.comment, "forwarding is on here") && i < replies {
				t.Errorf("an uplink's drop (#%d) comes before the replies to the sandboxes (#%d)", i, replies)
			}
		}
	}
}

func TestEgressMatchBlocks(t *testing.T) {
	saddr := ipv4Saddr(netip.MustParsePrefix("172.20.0.0/16"))
	mask, want := saddr[3].(*expr.Bitwise).Mask, []byte{255, 255, 0, 0}
	if !bytes.Equal(mask, want) || !bytes.Equal(saddr[4].(*expr.Cmp).Data, []byte{172, 20, 0, 0}) {
		t.Errorf("ip saddr 172.20.0.0/16: mask %v, address %v", mask, saddr[4].(*expr.Cmp).Data)
	}
	if nf := saddr[1].(*expr.Cmp).Data; !bytes.Equal(nf, []byte{unix.NFPROTO_IPV4}) {
		t.Errorf("ip saddr does not check the family first (an IPv6 header would be read as IPv4): %v", nf)
	}
	if got := netipMask(30); !bytes.Equal(got, []byte{255, 255, 255, 252}) {
		t.Errorf("mask /30: %v", got)
	}
	name := ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, "arcbox0")[1].(*expr.Cmp).Data
	if len(name) != unix.IFNAMSIZ || !bytes.HasPrefix(name, []byte("arcbox0\x00")) {
		t.Errorf("iifname arcbox0 compares %q, want it NUL-padded to 16 bytes", name)
	}
}

func TestInstallErrNamesTheTableAndTheKernelsLack(t *testing.T) {
	p := egressPlan{table: "arcbox-arcbox0"}
	err := p.installErr(fmt.Errorf("conn.Receive: %w", unix.ENOENT))
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "install nftables table inet arcbox-arcbox0") || !strings.Contains(err.Error(), "nft_masq") {
		t.Errorf("a kernel without masquerade: %v", err)
	}
	err = p.installErr(unix.EPERM)
	if !strings.Contains(err.Error(), "inet arcbox-arcbox0") || strings.Contains(err.Error(), "nft_masq") {
		t.Errorf("permission denied: %v", err)
	}
}

func TestEnableForwarding(t *testing.T) {
	dir := t.TempDir()
	write := func(ifname, v string) string {
		p := filepath.Join(dir, "conf", ifname, "forwarding")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	off, on := write("br0", "0\n"), write("eth0", "1") // the kernel's has a newline: one written would too
	for _, name := range []string{"br0", "eth0"} {
		if err := enableForwarding(dir, name); err != nil {
			t.Errorf("enableForwarding(%s): %v", name, err)
		}
	}
	if got, err := readForwarding(off); err != nil || !got {
		t.Errorf("br0 after enableForwarding: %v, %v", got, err)
	}
	if data, err := os.ReadFile(on); err != nil || string(data) != "1" {
		t.Errorf("eth0's forwarding, already on, was written: %q, %v", data, err)
	}
	if err := enableForwarding(dir, "gone0"); err == nil || !strings.Contains(err.Error(), "gone0") {
		t.Errorf("a missing interface: %v, want an error naming it", err)
	}
	write("odd0", "2\n")
	if err := enableForwarding(dir, "odd0"); err == nil || !strings.Contains(err.Error(), `"2"`) {
		t.Errorf("an unexpected value: %v", err)
	}
}

// egressNet is a guest with an uplink to an outside network namespace:
// the test's own namespace is the guest, upl0 (198.18.0.1/30) its uplink
// and default route, out0 (198.18.0.2/30) the outside's end, which has no
// route back to the sandbox range, so only NATed traffic is answered.
type egressNet struct {
	m       *Manager
	outside string // the outside namespace's file
	outNl   *netlink.Handle
}

const (
	guestUplink = "198.18.0.1"
	outsideAddr = "198.18.0.2"
)

func newEgressNet(t *testing.T, cidr, bridge string) *egressNet {
	t.Helper()
	m := newPrivilegedManager(t, cidr, bridge)
	setSysctl(t, "/proc/sys/net/ipv4/ip_forward", "0")
	t.Cleanup(func() { setSysctl(t, "/proc/sys/net/ipv4/ip_forward", "0") })
	e := &egressNet{m: m, outside: filepath.Join(t.TempDir(), "outside")}
	e.outNl = peerNetns(t, e.outside, "upl0", "out0", guestUplink+"/30", outsideAddr+"/30")
	if err := netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(outsideAddr)}); err != nil {
		t.Fatalf("default route via %s: %v", outsideAddr, err)
	}
	return e
}

// peerNetns makes a network namespace at path joined to the test's by a
// veth (here, there), with the two addresses, both ends and the far lo up.
// It returns a netlink handle in the new namespace.
func peerNetns(t *testing.T, path, here, there, hereAddr, thereAddr string) *netlink.Handle {
	t.Helper()
	ns, err := newNetns(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.close()
		if err := unmountRemove(path); err != nil {
			t.Error(err)
		}
	})
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: here}, PeerName: there, PeerNamespace: netlink.NsFd(ns.fd)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth %s: %v", here, err)
	}
	t.Cleanup(func() {
		if err := deleteLink(here); err != nil {
			t.Error(err)
		}
	})
	configure := func(h *netlink.Handle, name, addr string) {
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(link, a); err != nil {
			t.Fatalf("add %s to %s: %v", addr, name, err)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	here0, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer here0.Close()
	configure(here0, here, hereAddr)
	configure(ns.nl, there, thereAddr)
	lo, err := ns.nl.LinkByName("lo")
	if err == nil {
		err = ns.nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("lo up in %s: %v", path, err)
	}
	return handleIn(t, path) // its own socket: ns.nl closes with ns
}

// setup sets up sandbox id's network.
func (e *egressNet) setup(t *testing.T, id string) Endpoint {
	t.Helper()
	addr, err := e.m.Allocate(id)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := e.m.Setup(context.Background(), id, addr)
	if err != nil {
		t.Fatalf("Setup(%q): %v", id, err)
	}
	t.Cleanup(func() { teardown(t, e.m, id) })
	return ep
}

// counter is the packet count of the table's rule with comment in chain.
func (e *egressNet) counter(t *testing.T, chain, comment string) uint64 {
	t.Helper()
	for _, r := range tableRules(t, e.m.EgressTable(), chain) {
		if c, _ := userdata.GetString(r.UserData, userdata.TypeComment); c == comment {
			for _, x := range r.Exprs {
				if ctr, ok := x.(*expr.Counter); ok {
					return ctr.Packets
				}
			}
			t.Fatalf("rule %q of %s has no counter", comment, chain)
		}
	}
	t.Fatalf("no rule %q in chain %s", comment, chain)
	return 0
}

// waitDropped waits until the rule's counter passes before: the packet
// sent meanwhile met the rule.
func (e *egressNet) waitDropped(t *testing.T, chain, comment string, before uint64) {
	t.Helper()
	sandboxtest.WaitFor(t, "a packet to meet rule "+comment, func() bool { return e.counter(t, chain, comment) > before })
}

func TestEgressThroughNAT(t *testing.T) {
	e := newEgressNet(t, "10.82.0.0/24", "arcboxt6")
	// Another interface of the guest, whose forwarding must stay off.
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "bystander0"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteLink("bystander0") })
	ep := e.setup(t, "sb")

	for path, want := range map[string]string{
		"ip_forward":                 "0", // nothing global changed
		"conf/arcboxt6/forwarding":   "1",
		"conf/upl0/forwarding":       "1",
		"conf/bystander0/forwarding": "0",
	} {
		if got := readSysctl(t, "/proc/sys/net/ipv4/"+path); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}

	// TCP: the outside sees the guest's uplink address, and answers it.
	ln := listenIn(t, e.outside, outsideAddr+":0")
	served := serveSource(ln)
	var c net.Conn
	err := inNetns(ep.NetnsPath, func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 30*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("sandbox to the outside: %v", err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if src, err := r.ReadString('\n'); err != nil || src != guestUplink+"\n" {
		t.Fatalf("the outside saw the sandbox come from %q (%v), want the uplink's %s", src, err, guestUplink)
	}

	// The table is replaced whole each time the bridge is ensured (here,
	// by a second Setup): the connection lives on, its NAT in conntrack.
	e.setup(t, "sb-second")
	if _, err := io.WriteString(c, "still there\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadString('\n'); err != nil || got != "still there\n" {
		t.Errorf("after the table was replaced, the connection answered %q, %v", got, err)
	}
	c.Close()
	if err := <-served; err != nil {
		t.Errorf("outside server: %v", err)
	}

	// UDP (a nameserver's protocol), both ways through the NAT.
	var pc net.PacketConn
	if err := inNetns(e.outside, func() (err error) { pc, err = net.ListenPacket("udp4", outsideAddr+":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var uc net.Conn
	if err := inNetns(ep.NetnsPath, func() (err error) { uc, err = net.Dial("udp4", pc.LocalAddr().String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if _, err := uc.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = pc.SetReadDeadline(time.Now().Add(30 * time.Second)) // bounds a hang only
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "query" || from.(*net.UDPAddr).IP.String() != guestUplink {
		t.Fatalf("the outside got %q from %v (%v), want query from %s", buf[:n], from, err, guestUplink)
	}
	if _, err := pc.WriteTo([]byte("answer"), from); err != nil {
		t.Fatal(err)
	}
	_ = uc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := uc.Read(buf); err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("the sandbox got %q, %v; want the answer", buf[:n], err)
	}

	// The table, read back: its three chains, and each rule planned once,
	// in order (the replacement left no duplicates).
	e.checkTable(t, "upl0")
}

// serveSource accepts one connection on ln, writes the peer's address
// back, then echoes lines until the peer closes.
func serveSource(ln net.Listener) <-chan error {
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		if _, err := io.WriteString(c, host+"\n"); err != nil {
			done <- err
			return
		}
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if errors.Is(err, io.EOF) {
				done <- nil
				return
			}
			if err == nil {
				_, err = io.WriteString(c, line)
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	return done
}

// checkTable reads the egress table back and compares it with the plan.
func (e *egressNet) checkTable(t *testing.T, notRouters ...string) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == e.m.EgressTable() {
			got[ch.Name] = ch
		}
	}
	plan := egressPlan{table: e.m.EgressTable(), bridge: e.m.Bridge(), cidr: e.m.Prefix(), notRouters: notRouters}
	if len(got) != 3 {
		t.Fatalf("table %s has chains %v, want postrouting, forward, input", e.m.EgressTable(), got)
	}
	for _, want := range plan.chains(nil) {
		ch := got[want.Name]
		if ch == nil || *ch.Hooknum != *want.Hooknum || *ch.Priority != *want.Priority || ch.Type != want.Type ||
			(want.Policy != nil && (ch.Policy == nil || *ch.Policy != *want.Policy)) {
			t.Errorf("chain %s: got %+v, want %+v", want.Name, ch, want)
		}
	}
	var wantComments, gotComments []string
	for _, r := range plan.rules() {
		wantComments = append(wantComments, r.chain+": "+r.comment)
	}
	for _, chain := range []string{chainPostrouting, chainForward, chainInput} {
		for _, r := range tableRules(t, e.m.EgressTable(), chain) {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			gotComments = append(gotComments, chain+": "+comment)
		}
	}
	if !slices.Equal(gotComments, wantComments) {
		t.Errorf("rules in the kernel:\n%s\nwant:\n%s", strings.Join(gotComments, "\n"), strings.Join(wantComments, "\n"))
	}
	if nft, err := exec.LookPath("nft"); err == nil {
		out, err := exec.Command(nft, "list", "table", "inet", e.m.EgressTable()).CombinedOutput()
		t.Logf("nft list table inet %s (%v):\n%s", e.m.EgressTable(), err, out)
	}
}

func TestEgressFences(t *testing.T) {
	e := newEgressNet(t, "10.83.0.0/24", "arcboxt7")
	ep := e.setup(t, "sb")
	sandbox := func(fn func() error) {
		t.Helper()
		if err := inNetns(ep.NetnsPath, fn); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("no connection to the guest", func(t *testing.T) {
		// A guest service on every address: the agent's API, say.
		ln, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		for _, addr := range []string{ep.Gateway.String(), guestUplink} {
			sandbox(func() error {
				c, err := net.DialTimeout("tcp4", net.JoinHostPort(addr, fmt.Sprint(port)), 30*time.Second)
				if err == nil {
					c.Close()
				}
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("sandbox to the guest's %s:%d: %v, want connection refused", addr, port, err)
				}
				return nil
			})
		}
		_ = ln.(*net.TCPListener).SetDeadline(time.Now())
		if c, err := ln.Accept(); err == nil {
			c.Close()
			t.Error("the guest's listener accepted a sandbox's connection")
		}

		// UDP is refused too (ICMP admin-prohibited: host unreachable).
		pc, err := net.ListenPacket("udp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		sandbox(func() error {
			uc, err := net.Dial("udp4", net.JoinHostPort(ep.Gateway.String(), fmt.Sprint(pc.LocalAddr().(*net.UDPAddr).Port)))
			if err != nil {
				return err
			}
			defer uc.Close()
			if _, err := uc.Write([]byte("hello")); err != nil {
				return err
			}
			_ = uc.SetReadDeadline(time.Now().Add(30 * time.Second)) // bounds a hang only
			if _, err := uc.Read(make([]byte, 8)); !errors.Is(err, syscall.EHOSTUNREACH) {
				t.Errorf("UDP from the sandbox to the guest: %v, want host unreachable", err)
			}
			return nil
		})
		_ = pc.SetReadDeadline(time.Now())
		if _, _, err := pc.ReadFrom(make([]byte, 8)); err == nil {
			t.Error("the guest's UDP socket got a sandbox's datagram")
		}

		// But the guest reaches a sandbox (its replies pass), and a
		// sandbox pings its gateway.
		var sln net.Listener
		sandbox(func() (err error) { sln, err = net.Listen("tcp4", ":0"); return err })
		defer sln.Close()
		target := net.JoinHostPort(ep.Address.Addr().String(), fmt.Sprint(sln.Addr().(*net.TCPAddr).Port))
		roundTrip(t, "guest to sandbox", func() (net.Conn, error) { return net.Dial("tcp4", target) }, sln)
		sandbox(func() error { return ping(ep.Gateway) })
	})

	t.Run("nothing routed into the sandboxes", func(t *testing.T) {
		// The outside knows the way; the guest does not route for it.
		if err := e.outNl.RouteAdd(&netlink.Route{Dst: ipNet(e.m.Prefix()), Gw: net.ParseIP(guestUplink)}); err != nil {
			t.Fatal(err)
		}
		var sc net.PacketConn
		sandbox(func() (err error) { sc, err = net.ListenPacket("udp4", ":0"); return err })
		defer sc.Close()
		const rule = "nothing else is routed to the sandboxes"
		before := e.counter(t, chainForward, rule)
		sendFrom(t, e.outside, "", net.JoinHostPort(ep.Address.Addr().String(), fmt.Sprint(sc.LocalAddr().(*net.UDPAddr).Port)))
		e.waitDropped(t, chainForward, rule, before)
		_ = sc.SetReadDeadline(time.Now())
		if _, _, err := sc.ReadFrom(make([]byte, 8)); err == nil {
			t.Error("a datagram from the outside reached the sandbox")
		}
	})

	t.Run("no spoofed source leaves", func(t *testing.T) {
		h := handleIn(t, ep.NetnsPath)
		eth, err := h.LinkByName(sandboxIf)
		if err != nil {
			t.Fatal(err)
		}
		spoofed, _ := netlink.ParseAddr("198.18.7.7/32")
		if err := h.AddrAdd(eth, spoofed); err != nil {
			t.Fatal(err)
		}
		var pc net.PacketConn
		if err := inNetns(e.outside, func() (err error) { pc, err = net.ListenPacket("udp4", outsideAddr+":0"); return err }); err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		const rule = "nothing else leaves the sandboxes: spoofed sources, IPv6"
		before := e.counter(t, chainForward, rule)
		sendFrom(t, ep.NetnsPath, "198.18.7.7", pc.LocalAddr().String())
		e.waitDropped(t, chainForward, rule, before)
		_ = pc.SetReadDeadline(time.Now())
		if _, from, err := pc.ReadFrom(make([]byte, 8)); err == nil {
			t.Errorf("a datagram with a spoofed source left the sandbox (seen from %v)", from)
		}
	})

	t.Run("the guest routes nothing else", func(t *testing.T) {
		// A network behind the guest that is not the sandboxes'.
		lan := filepath.Join(t.TempDir(), "lan")
		peerNetns(t, lan, "lan0", "lan1", "198.18.2.1/30", "198.18.2.2/30")
		if err := e.outNl.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("198.18.2.0/30")), Gw: net.ParseIP(guestUplink)}); err != nil {
			t.Fatal(err)
		}
		var pc net.PacketConn
		if err := inNetns(lan, func() (err error) { pc, err = net.ListenPacket("udp4", "198.18.2.2:0"); return err }); err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		const rule = "forwarding is on here for the sandboxes' replies only"
		before := e.counter(t, chainForward, rule)
		sendFrom(t, e.outside, "", pc.LocalAddr().String())
		e.waitDropped(t, chainForward, rule, before)
		_ = pc.SetReadDeadline(time.Now())
		if _, _, err := pc.ReadFrom(make([]byte, 8)); err == nil {
			t.Error("the guest forwarded a datagram from its uplink to another network")
		}

		// Where ip_forward is on, the guest is a router by its owner's
		// choice (dockerd's DNAT to containers needs it): the table then
		// leaves the uplinks' traffic alone, and changes nothing global.
		setSysctl(t, "/proc/sys/net/ipv4/ip_forward", "1")
		e.setup(t, "sb-router")
		e.checkTable(t)
		sendFrom(t, e.outside, "", pc.LocalAddr().String())
		_ = pc.SetReadDeadline(time.Now().Add(30 * time.Second)) // bounds a hang only
		if _, _, err := pc.ReadFrom(make([]byte, 8)); err != nil {
			t.Errorf("with ip_forward on, the guest did not forward to the other network: %v", err)
		}
		if got := readSysctl(t, "/proc/sys/net/ipv4/ip_forward"); got != "1" {
			t.Errorf("ip_forward: %s, want it left on", got)
		}
	})
}

// TestEgressWithoutUplink: a guest with no default route still sets up
// sandboxes, fenced; only the bridge forwards.
func TestEgressWithoutUplink(t *testing.T) {
	m := newPrivilegedManager(t, "10.84.0.0/24", "arcboxt8")
	setSysctl(t, "/proc/sys/net/ipv4/ip_forward", "0")
	addr, _ := m.Allocate("sb")
	if _, err := m.Setup(context.Background(), "sb", addr); err != nil {
		t.Fatalf("Setup without an uplink: %v", err)
	}
	t.Cleanup(func() { teardown(t, m, "sb") })
	if got := readSysctl(t, "/proc/sys/net/ipv4/conf/arcboxt8/forwarding"); got != "1" {
		t.Errorf("bridge forwarding: %s", got)
	}
	(&egressNet{m: m}).checkTable(t)
}

// sendFrom sends one UDP datagram to dst from the namespace at path, from
// address src ("" for the route's).
func sendFrom(t *testing.T, path, src, dst string) {
	t.Helper()
	err := inNetns(path, func() error {
		laddr := &net.UDPAddr{}
		if src != "" {
			laddr.IP = net.ParseIP(src)
		}
		c, err := net.ListenUDP("udp4", laddr)
		if err != nil {
			return err
		}
		defer c.Close()
		to, err := net.ResolveUDPAddr("udp4", dst)
		if err != nil {
			return err
		}
		_, err = c.WriteTo([]byte("hello"), to)
		return err
	})
	if err != nil {
		t.Fatalf("send from %s to %s: %v", path, dst, err)
	}
}

// ping sends an ICMP echo request to dst on a raw socket and waits for
// the reply. It must run in the namespace to ping from.
func ping(dst netip.Addr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return fmt.Errorf("raw ICMP socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((30 * time.Second).Nanoseconds()) // bounds a hang only
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	echo := []byte{8, 0, 0, 0, 0x0a, 0xbc, 0, 1, 'a', 'r', 'c', 'b'}
	sum := 0
	for i := 0; i < len(echo); i += 2 {
		sum += int(echo[i])<<8 | int(echo[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	echo[2], echo[3] = byte(^sum>>8), byte(^sum)
	if err := unix.Sendto(fd, echo, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return fmt.Errorf("ping %s: %w", dst, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("ping %s: no reply: %w", dst, err)
		}
		hl := int(buf[0]&0x0f) * 4 // a raw socket hands over the IP header too
		if sa, ok := from.(*unix.SockaddrInet4); ok && sa.Addr == dst.As4() && n >= hl+8 && buf[hl] == 0 && buf[hl+4] == 0x0a && buf[hl+5] == 0xbc {
			return nil
		}
	}
}

func readSysctl(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func setSysctl(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// tableRules returns the rules of a chain of an inet table, in order.
func tableRules(t *testing.T, table, chain string) []*nftables.Rule {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := c.GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: table}, &nftables.Chain{Name: chain})
	if err != nil {
		t.Fatalf("rules of %s %s: %v", table, chain, err)
	}
	return rules
}

// deleteTable deletes an inet table, if there is one.
func deleteTable(t testing.TB, name string) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		t.Errorf("delete table inet %s: %v", name, err)
	}
}

func hasExpr(exprs []expr.Any, want expr.Any) bool {
	return slices.ContainsFunc(exprs, func(x expr.Any) bool { return exprEqual(x, want) })
}

// hasSeq reports whether seq appears in exprs, in a row.
func hasSeq(exprs, seq []expr.Any) bool {
	for i := 0; i+len(seq) <= len(exprs); i++ {
		if slices.EqualFunc(exprs[i:i+len(seq)], seq, exprEqual) {
			return true
		}
	}
	return false
}

func exprEqual(a, b expr.Any) bool { return fmt.Sprintf("%T%+v", a, a) == fmt.Sprintf("%T%+v", b, b) }

func describe(exprs []expr.Any) string {
	var parts []string
	for _, x := range exprs {
		parts = append(parts, fmt.Sprintf("%T%+v", x, x))
	}
	return strings.Join(parts, " ")
}

// BenchmarkEnsureBridge: what each Setup pays to ensure the bridge, its
// egress table (replaced whole) and forwarding.
func BenchmarkEnsureBridge(b *testing.B) {
	testenv.RequireIsolated(b)
	m, err := New(Config{CIDR: netip.MustParsePrefix("10.85.0.0/24"), Bridge: "arcboxb0", NetnsDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if l, err := netlink.LinkByName("arcboxb0"); err == nil {
			_ = netlink.LinkDel(l)
		}
		deleteTable(b, m.EgressTable())
	})
	for b.Loop() {
		if _, err := m.ensureBridge(); err != nil {
			b.Fatal(err)
		}
	}
}
