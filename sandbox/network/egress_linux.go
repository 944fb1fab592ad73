package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The egress table's base chains.
const (
	chainPostrouting = "postrouting" // nat: masquerade what leaves the range
	chainForward     = "forward"     // filter: what the guest routes for the sandboxes
	chainInput       = "input"       // filter: what sandboxes may send the guest itself
)

// kernelNeeds names what the table's expressions need from the kernel,
// for the error of a kernel that lacks them.
const kernelNeeds = "the kernel needs nf_tables with nft_chain_nat, nft_masq, nft_ct and nft_reject_inet, built in or loadable"

// ensureEgress puts the egress table in place (replacing it whole) and then
// turns IPv4 forwarding on for the bridge and the uplinks, in that order,
// so no interface forwards before the rules that restrict it are in force.
// It runs with bridgeMu held, each time the bridge is ensured: the uplinks
// and ip_forward are read afresh, and a table deleted meanwhile comes back.
func (m *Manager) ensureEgress() error {
	ups, err := uplinks(m.cfg.Bridge)
	if err != nil {
		return err
	}
	global, err := readForwarding(filepath.Join(m.sysctlDir, "ip_forward"))
	if err != nil {
		return err
	}
	plan := egressPlan{table: m.EgressTable(), bridge: m.cfg.Bridge, cidr: m.prefix}
	if !global {
		// Forwarding on an uplink would make the guest a router for
		// whatever arrives there; past uplinks keep their rule, as their
		// forwarding stays on.
		for _, u := range ups {
			if !slices.Contains(m.notRouters, u) {
				m.notRouters = append(m.notRouters, u)
			}
		}
		plan.notRouters = slices.Clone(m.notRouters)
	}
	if err := plan.install(); err != nil {
		return err
	}
	for _, name := range append([]string{m.cfg.Bridge}, ups...) {
		if err := enableForwarding(m.sysctlDir, name); err != nil {
			return err
		}
	}
	return nil
}

// uplinks returns the interfaces of the IPv4 default routes of the main
// table (each hop of a multipath one), the bridge aside, in route order.
func uplinks(bridge string) ([]string, error) {
	var routes []netlink.Route
	var err error
	for range 3 { // a dump interrupted by a concurrent change is retried
		routes, err = netlink.RouteList(nil, netlink.FAMILY_V4)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list the IPv4 routes (to find the uplinks): %w", err)
	}
	var names []string
	add := func(index int) error {
		if index == 0 {
			return nil
		}
		link, err := netlink.LinkByIndex(index)
		if err != nil {
			return fmt.Errorf("find the uplink of the default route (link %d): %w", index, err)
		}
		if name := link.Attrs().Name; name != bridge && !slices.Contains(names, name) {
			names = append(names, name)
		}
		return nil
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue // not a default route
			}
		}
		if err := add(r.LinkIndex); err != nil {
			return nil, err
		}
		for _, hop := range r.MultiPath {
			if err := add(hop.LinkIndex); err != nil {
				return nil, err
			}
		}
	}
	return names, nil
}

// readForwarding reads an IPv4 forwarding sysctl: ip_forward, or an
// interface's conf/<if>/forwarding.
func readForwarding(path string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	switch v := strings.TrimSpace(string(data)); v {
	case "0":
		return false, nil
	case "1":
		return true, nil
	default:
		return false, fmt.Errorf("read %s: unexpected value %q", path, v)
	}
}

// enableForwarding turns IPv4 forwarding on for one interface, in
// dir/conf/<if>/forwarding, unless it is on already.
func enableForwarding(dir, ifname string) error {
	path := filepath.Join(dir, "conf", ifname, "forwarding")
	on, err := readForwarding(path)
	if err != nil {
		return fmt.Errorf("IPv4 forwarding on %s: %w", ifname, err)
	}
	if on {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding on %s: %w", ifname, err)
	}
	return nil
}

// egressPlan is the egress table of one bridge, as installed.
type egressPlan struct {
	table  string       // in the inet family
	bridge string       // the sandboxes' bridge
	cidr   netip.Prefix // the sandbox range
	// notRouters are interfaces whose forwarding is on for the sandboxes'
	// sake only (ip_forward is off): what the guest forwards from them
	// must be a reply to a sandbox.
	notRouters []string
}

// nftRule is one rule of the plan, in order within its chain.
type nftRule struct {
	chain   string
	comment string // shown by `nft list table`
	exprs   []expr.Any
}

// chains returns the plan's base chains in t. The filter chains accept by
// default, so traffic that is not the sandboxes' is left to the other
// tables (dockerd's among them).
func (p egressPlan) chains(t *nftables.Table) []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: chainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
		{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept},
		{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept},
	}
}

// rules returns the plan's rules. In nft's words, for bridge B and range R:
//
//	postrouting: ip saddr R oifname != B masquerade
//	forward:     iifname B oifname B accept
//	             iifname B ct state invalid,untracked drop
//	             iifname B ip saddr R accept
//	             iifname B drop
//	             oifname B ct state established,related accept
//	             oifname B drop
//	             iifname U drop                  (each of notRouters)
//	input:       iifname B ct state established,related accept
//	             iifname B meta l4proto { icmp, ipv6-icmp } accept
//	             iifname B meta l4proto tcp reject with tcp reset
//	             iifname B reject with icmpx admin-prohibited
func (p egressPlan) rules() []nftRule {
	b := p.bridge
	established := expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED
	rules := []nftRule{
		{chainPostrouting, "sandboxes leave the guest behind its address",
			cat(ipv4Saddr(p.cidr), ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, b), counted(&expr.Masq{}))},

		{chainForward, "sandbox to sandbox: bridged, seen here only with br_netfilter",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, b), verdict(expr.VerdictAccept))},
		{chainForward, "nothing leaves the sandboxes unNATed",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), ctState(expr.CtStateBitINVALID|expr.CtStateBitUNTRACKED), counted(verdict(expr.VerdictDrop)...))},
		{chainForward, "sandbox egress",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), ipv4Saddr(p.cidr), counted(verdict(expr.VerdictAccept)...))},
		{chainForward, "nothing else leaves the sandboxes: spoofed sources, IPv6",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), counted(verdict(expr.VerdictDrop)...))},
		{chainForward, "replies to the sandboxes",
			cat(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, b), ctState(established), verdict(expr.VerdictAccept))},
		{chainForward, "nothing else is routed to the sandboxes",
			cat(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, b), counted(verdict(expr.VerdictDrop)...))},
	}
	for _, u := range p.notRouters {
		rules = append(rules, nftRule{chainForward, "forwarding is on here for the sandboxes' replies only",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, u), counted(verdict(expr.VerdictDrop)...))})
	}
	return append(rules,
		nftRule{chainInput, "replies to the guest's own connections",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), ctState(established), verdict(expr.VerdictAccept))},
		nftRule{chainInput, "ping the gateway",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), l4proto(unix.IPPROTO_ICMP), verdict(expr.VerdictAccept))},
		nftRule{chainInput, "neighbour discovery",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), l4proto(unix.IPPROTO_ICMPV6), verdict(expr.VerdictAccept))},
		nftRule{chainInput, "sandboxes open no connection to the guest",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b), l4proto(unix.IPPROTO_TCP),
				counted(&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}))},
		nftRule{chainInput, "nor send it anything else",
			cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, b),
				counted(&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}))},
	)
}

// install replaces the plan's table in one transaction: add (so the
// delete finds it), delete, add with its chains and rules. The kernel
// applies all of it or none, so the bridge is never without its rules
// once it had them, and no other table is touched.
func (p egressPlan) install() error {
	c, err := nftables.New()
	if err != nil {
		return p.installErr(err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: p.table}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	byName := map[string]*nftables.Chain{}
	for _, ch := range p.chains(t) {
		byName[ch.Name] = c.AddChain(ch)
	}
	for _, r := range p.rules() {
		c.AddRule(&nftables.Rule{
			Table:    t,
			Chain:    byName[r.chain],
			Exprs:    r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
		})
	}
	if err := c.Flush(); err != nil {
		return p.installErr(err)
	}
	return nil
}

// installErr names the table, and what the kernel lacks when it says so.
func (p egressPlan) installErr(err error) error {
	for _, lack := range []error{unix.ENOENT, unix.EOPNOTSUPP, unix.EPROTONOSUPPORT, unix.EAFNOSUPPORT} {
		if errors.Is(err, lack) {
			return fmt.Errorf("install nftables table inet %s (%s): %w", p.table, kernelNeeds, err)
		}
	}
	return fmt.Errorf("install nftables table inet %s: %w", p.table, err)
}

// The rules' building blocks. Each loads into register 1 and compares,
// as nft itself compiles them.

func cat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

// counted puts a counter before the final expressions, so `nft list table`
// shows how often the rule matched.
func counted(final ...expr.Any) []expr.Any { return append([]expr.Any{&expr.Counter{}}, final...) }

// ifname matches the input or output interface's name against name.
func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	data := make([]byte, unix.IFNAMSIZ) // the kernel compares all 16 bytes
	copy(data, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// ipv4Saddr matches IPv4 packets whose source is in p.
func ipv4Saddr(p netip.Prefix) []expr.Any {
	mask := netipMask(p.Bits())
	addr := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
	}
}

// ctState matches packets whose conntrack state has any of bits.
func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// l4proto matches the transport protocol, IPv4's or IPv6's.
func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func netipMask(bits int) []byte {
	m := uint32(0xffffffff) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return binaryutil.BigEndian.PutUint32(m)
}
