// Package network gives sandboxes bridge networking: an IPv4 address from a
// pool, a network namespace bind-mounted to a file, and a veth pair joining
// that namespace to a host bridge whose address is the sandboxes' gateway,
// with egress through NAT out of the guest's uplinks.
//
// A Pool hands out the addresses, in memory; a Manager's Setup and Teardown
// change the machine (Linux only), for addresses its Pool holds.
//
// # Egress
//
// Each time Setup ensures the bridge, before any veth is attached to it, the
// Manager replaces, in one nftables transaction, a table of its own,
// inet arcbox-<bridge> (EgressTable; no other table is ever touched, so
// dockerd's iptables-nft rules live on beside it):
//
//   - postrouting: what leaves the range through any other interface is
//     masqueraded behind that interface's address;
//   - forward (policy accept, so others' forwarding is unaffected): the
//     sandboxes' packets with a source in the range leave the bridge, and
//     replies come back; nothing else leaves it (spoofed sources, IPv6),
//     and nothing else is routed into it. Sandbox to sandbox is bridged,
//     not routed: it crosses this chain only when br_netfilter hands
//     bridged packets to it, and is accepted;
//   - input: sandboxes hold unreviewed code, so they open no connection
//     to the guest itself, at any of its addresses (TCP is reset, the rest
//     gets ICMP admin-prohibited): not the agent's API, not the Docker
//     proxy, not whatever else listens. Replies to the guest's own
//     connections into sandboxes pass, and so does ICMP (ping the gateway).
//
// IPv4 forwarding is a property of the receiving interface. When
// net.ipv4.ip_forward is on (as the agent sets it when it is PID 1, before
// dockerd starts) nothing global changes. When it is off, forwarding is
// turned on for the bridge and the uplinks only (the interfaces of the main
// table's IPv4 default routes, read afresh each time), and the forward
// chain drops whatever the guest would forward from those uplinks that is
// not a reply to a sandbox, so the guest does not become a router for its
// network. dockerd enables ip_forward itself when it finds it off, and then
// sets its FORWARD chain's policy to drop, which no other table can undo:
// where dockerd runs, ip_forward must be on before it starts.
//
// Sandboxes get the guest's nameservers (ResolvConf); one outside the guest
// is reached through the NAT like any other server. A resolver on the
// guest's loopback is unreachable from a sandbox and is left out.
//
// The table stays when the agent stops: sandboxes outlive it, and so does
// their egress. It needs nf_tables with nft_chain_nat, nft_masq, nft_ct and
// nft_reject_inet, built in or loadable; without them Setup fails, saying
// so, rather than attach a sandbox the guest cannot fence.
package network

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"

	"github.com/arcbox/arcbox-agent/internal/errclass"
	"github.com/arcbox/arcbox-agent/netconf"
)

// The error classes the Manager returns. Every error it returns for a bad
// argument or a conflict wraps one of them (test with errors.Is), with a
// message naming the object.
var (
	// ErrInvalid: a malformed config, sandbox id or address.
	ErrInvalid = errors.New("invalid input")
	// ErrConflict: an address held by another sandbox, a sandbox that holds
	// another address, or a name taken on the machine.
	ErrConflict = errors.New("conflict")
	// ErrExhausted: every address of the range is held.
	ErrExhausted = errors.New("address range exhausted")
)

// errorf is an error of class whose message does not end in it.
func errorf(class error, format string, args ...any) error {
	return errclass.Errorf(class, format, args...)
}

// Defaults for the optional Config fields.
const (
	DefaultBridge     = "arcbox0"
	DefaultResolvConf = "/etc/resolv.conf"
)

// Config describes the sandbox network. CIDR and NetnsDir are required.
type Config struct {
	// CIDR is the sandbox range in its masked form, e.g. 172.20.0.0/16: IPv4,
	// a prefix length from 8 to 30. Its first address (172.20.0.1) is the
	// gateway, the bridge's address. A form with host bits set, such as
	// 172.20.0.5/16, is rejected rather than guessed at.
	CIDR netip.Prefix
	// Bridge is the bridge's name; "" is DefaultBridge ("arcbox0").
	Bridge string
	// NetnsDir is the directory where each sandbox's network namespace is
	// bind-mounted as a file named after the sandbox id. It must be absolute
	// (it goes into OCI specs); Setup creates it 0700 when missing.
	NetnsDir string
	// ResolvConf is the host's resolv.conf; "" is DefaultResolvConf.
	ResolvConf string
}

// Endpoint is a sandbox's network, as Setup made it.
type Endpoint struct {
	// NetnsPath is the bind-mounted network namespace, NetnsDir/<id>: the
	// path for the OCI spec's network namespace.
	NetnsPath string
	// Address is eth0's address inside the namespace, e.g. 172.20.0.2/16.
	Address netip.Prefix
	// Gateway is the bridge's address, the namespace's default route.
	Gateway netip.Addr
	// HostIf is the name of the veth's host end, attached to the bridge.
	HostIf string
}

// Manager sets up and tears down sandbox networks, for the addresses its
// Pool hands out. Its methods are safe for concurrent use; calls for the
// same sandbox id must not overlap (the sandbox manager serialises them).
type Manager struct {
	*Pool
	cfg Config

	bridgeMu sync.Mutex // serialises the bridge's creation, address check and egress table
	// notRouters are the uplinks seen while ip_forward was off, whose
	// forwarding is on for the sandboxes' sake only (under bridgeMu).
	notRouters []string
	// sysctlDir is /proc/sys/net/ipv4, where forwarding is read and set.
	sysctlDir string
}

// New validates cfg and returns a Manager with an empty address pool. It has
// no side effects on the machine.
func New(cfg Config) (*Manager, error) {
	pool, err := NewPool(cfg.CIDR)
	if err != nil {
		return nil, fmt.Errorf("config %w", err)
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if err := validIfName(cfg.Bridge); err != nil {
		return nil, fmt.Errorf("config Bridge: %w", err)
	}
	if cfg.NetnsDir == "" {
		return nil, errorf(ErrInvalid, "config NetnsDir: required")
	}
	if !filepath.IsAbs(cfg.NetnsDir) {
		return nil, errorf(ErrInvalid, "config NetnsDir %q: not an absolute path", cfg.NetnsDir)
	}
	cfg.NetnsDir = filepath.Clean(cfg.NetnsDir)
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	return &Manager{Pool: pool, cfg: cfg, sysctlDir: "/proc/sys/net/ipv4"}, nil
}

// Bridge returns the bridge's name.
func (m *Manager) Bridge() string { return m.cfg.Bridge }

// EgressTable returns the name of the nftables table (family inet) that
// holds the bridge's egress rules: arcbox-<bridge>, so agents with
// different bridges never share one.
func (m *Manager) EgressTable() string { return "arcbox-" + m.cfg.Bridge }

// NetnsPath returns where Setup bind-mounts id's network namespace.
func (m *Manager) NetnsPath(id string) string { return filepath.Join(m.cfg.NetnsDir, id) }

// HostIfName returns the name of id's veth host end: "vsb" and the first 10
// hex digits of sha256(id), within the kernel's 15 characters.
func HostIfName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "vsb" + hex.EncodeToString(sum[:5])
}

// validID accepts ids usable as a file name in NetnsDir and as a link alias.
func validID(id string) error {
	switch {
	case id == "":
		return errorf(ErrInvalid, "sandbox id: empty")
	case id == "." || id == "..", strings.ContainsAny(id, "/\x00"):
		return errorf(ErrInvalid, "sandbox id %q: not usable as a file name", id)
	case len(id) > 255:
		return errorf(ErrInvalid, "sandbox id %.20q...: longer than 255 bytes", id)
	}
	return nil
}

// validIfName follows the kernel's dev_valid_name (netconf's rule).
func validIfName(name string) error {
	if len(name) > 15 {
		return errorf(ErrInvalid, "interface name %q: longer than 15 bytes", name)
	}
	if !netconf.ValidInterfaceName(name) {
		return errorf(ErrInvalid, "interface name %q: not a valid name (1 to 15 bytes, not . or .., no /, :, white space or NUL)", name)
	}
	return nil
}
