package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// sandboxIf is the name of the veth's end inside the namespace.
const sandboxIf = "eth0"

// Setup gives sandbox id the network at addr, which id must hold (Allocate or
// Reserve). It
//
//   - ensures the bridge exists, has the gateway address and is up (creating
//     it, or adding the address, as needed; a bridge made concurrently by
//     another caller is fine, a gateway address with another prefix length is
//     an error), and puts its egress table in place and forwarding on (see
//     the package comment), before any sandbox is attached to it;
//   - creates a network namespace and bind-mounts it at NetnsDir/<id>;
//   - creates a veth pair: the host end (HostIfName(id), alias id) is attached
//     to the bridge and brought up; the other end is created inside the
//     namespace as eth0, given addr with the range's prefix length and brought
//     up, with lo up and a default route via the gateway.
//
// On failure it undoes what it did (veth, mount and file; not the bridge) and
// returns the error. A leftover namespace file or veth of an earlier run is a
// conflict: Teardown clears them. Calls for different ids may run
// concurrently. The agent's threads never switch namespaces: the new
// namespace is made by a locked thread that exits once it has bound it.
func (m *Manager) Setup(ctx context.Context, id string, addr netip.Addr) (ep Endpoint, err error) {
	if err := validID(id); err != nil {
		return Endpoint{}, err
	}
	if err := m.checkHostAddr(addr); err != nil {
		return Endpoint{}, fmt.Errorf("set up sandbox %q: %w", id, err)
	}
	if holder, ok := m.holder(addr); !ok || holder != id {
		return Endpoint{}, errorf(ErrConflict, "set up sandbox %q: it does not hold %s (Allocate or Reserve it first)", id, addr)
	}
	ep = Endpoint{
		NetnsPath: m.NetnsPath(id),
		Address:   netip.PrefixFrom(addr, m.prefix.Bits()),
		Gateway:   m.gateway,
		HostIf:    HostIfName(id),
	}
	wrap := func(err error) error { return fmt.Errorf("set up network of sandbox %q: %w", id, err) }
	if err := ctx.Err(); err != nil {
		return Endpoint{}, wrap(err)
	}

	bridge, err := m.ensureBridge()
	if err != nil {
		return Endpoint{}, wrap(err)
	}

	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				errs = append(errs, uerr)
			}
		}
		if len(errs) > 0 {
			err = fmt.Errorf("%w (and undoing it: %w)", err, errors.Join(errs...))
		}
		ep = Endpoint{}
	}()

	if err := os.MkdirAll(m.cfg.NetnsDir, 0o700); err != nil {
		return ep, wrap(fmt.Errorf("create netns directory: %w", err))
	}
	ns, err := newNetns(ep.NetnsPath)
	if err != nil {
		return ep, wrap(err)
	}
	undo = append(undo, func() error { return unmountRemove(ep.NetnsPath) })
	defer ns.close()
	if err := ctx.Err(); err != nil {
		return ep, wrap(err)
	}

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: ep.HostIf},
		PeerName:      sandboxIf,
		PeerNamespace: netlink.NsFd(ns.fd),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return ep, wrap(errorf(ErrConflict, "create veth %s: a link of that name exists (Teardown removes a leftover)", ep.HostIf))
		}
		return ep, wrap(fmt.Errorf("create veth %s: %w", ep.HostIf, err))
	}
	undo = append(undo, func() error { return deleteLink(ep.HostIf) })

	if err := attachHostEnd(ep.HostIf, id, bridge); err != nil {
		return ep, wrap(err)
	}
	if err := ctx.Err(); err != nil {
		return ep, wrap(err)
	}
	if err := configureInside(ns.nl, ep); err != nil {
		return ep, wrap(fmt.Errorf("in namespace %s: %w", ep.NetnsPath, err))
	}
	return ep, nil
}

// Teardown deletes sandbox id's veth (its peer goes with it), then unmounts
// (MNT_DETACH) and removes its namespace file. Missing pieces are not errors,
// so it also clears what a crashed agent left. It keeps id's address: Release
// frees it. Call it once the sandbox's processes are gone: while they live,
// the namespace lives on without its veth.
func (m *Manager) Teardown(id string) error {
	if err := validID(id); err != nil {
		return err
	}
	var errs []error
	if err := deleteLink(HostIfName(id)); err != nil {
		errs = append(errs, err)
	}
	if err := unmountRemove(m.NetnsPath(id)); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down network of sandbox %q: %w", id, err)
	}
	return nil
}

// ensureBridge makes sure the bridge exists, holds the gateway address, is
// up and has its egress.
func (m *Manager) ensureBridge() (netlink.Link, error) {
	m.bridgeMu.Lock()
	defer m.bridgeMu.Unlock()
	name := m.cfg.Bridge

	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
		if err != nil && !errors.Is(err, unix.EEXIST) { // EEXIST: another process made it first
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		link, err = netlink.LinkByName(name)
	}
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", name, err)
	}
	if link.Type() != "bridge" {
		return nil, errorf(ErrConflict, "bridge %s: a link of that name exists and is a %s, not a bridge", name, link.Type())
	}

	want := ipNet(netip.PrefixFrom(m.gateway, m.prefix.Bits()))
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	// An interrupted dump may miss the address; adding it then reports EEXIST.
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list addresses of bridge %s: %w", name, err)
	}
	found := false
	for _, a := range addrs {
		if a.IPNet == nil || !a.IP.Equal(want.IP) {
			continue
		}
		if ones, _ := a.Mask.Size(); ones != m.prefix.Bits() {
			return nil, errorf(ErrConflict, "bridge %s: has %s, want the gateway %s", name, a.IPNet, want)
		}
		found = true
	}
	if !found {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: want}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add %s to bridge %s: %w", want, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring bridge %s up: %w", name, err)
	}
	if err := m.ensureEgress(); err != nil {
		return nil, fmt.Errorf("egress of bridge %s: %w", name, err)
	}
	return link, nil
}

// attachHostEnd labels the veth's host end with the sandbox id, attaches it
// to the bridge and brings it up.
func attachHostEnd(name, id string, bridge netlink.Link) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", name, err)
	}
	if err := netlink.LinkSetAlias(link, id); err != nil {
		return fmt.Errorf("set alias of veth %s: %w", name, err)
	}
	if err := netlink.LinkSetMaster(link, bridge); err != nil {
		return fmt.Errorf("attach veth %s to bridge %s: %w", name, bridge.Attrs().Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring veth %s up: %w", name, err)
	}
	return nil
}

// configureInside gives eth0 its address, brings eth0 and lo up and adds the
// default route, through a netlink handle bound to the sandbox's namespace.
func configureInside(h *netlink.Handle, ep Endpoint) error {
	eth, err := h.LinkByName(sandboxIf)
	if err != nil {
		return fmt.Errorf("find %s: %w", sandboxIf, err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(ep.Address)}); err != nil {
		return fmt.Errorf("add %s to %s: %w", ep.Address, sandboxIf, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring %s up: %w", sandboxIf, err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(ep.Gateway.AsSlice())}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("add default route via %s: %w", ep.Gateway, err)
	}
	return nil
}

// netnsRef holds a new namespace while Setup configures it.
type netnsRef struct {
	fd netns.NsHandle  // the namespace, opened from its file
	nl *netlink.Handle // a netlink socket inside it
}

func (r netnsRef) close() {
	r.nl.Close()
	r.fd.Close()
}

// newNetns creates a network namespace and bind-mounts it at path, which
// must not exist. It returns the namespace with a netlink handle inside it.
//
// A goroutine locks itself to a thread, unshares the network namespace, binds
// it at path and opens the netlink socket there; it never unlocks, so the Go
// runtime ends the thread with the goroutine and no thread of ours ever
// returns from the new namespace. (netlink.NewHandleAt would instead switch
// a thread in and back out, with no way to recover if switching back fails.)
func newNetns(path string) (ref netnsRef, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if errors.Is(err, os.ErrExist) {
		return netnsRef{}, errorf(ErrConflict, "create netns file %s: exists (Teardown removes a leftover)", path)
	}
	if err != nil {
		return netnsRef{}, fmt.Errorf("create netns file: %w", err)
	}
	f.Close()

	type result struct {
		nl  *netlink.Handle
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread must not run anything else.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("unshare network namespace: %w", err)}
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
			done <- result{err: fmt.Errorf("bind network namespace at %s: %w", path, err)}
			return
		}
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // bound to this thread's namespace
		if err != nil {
			err = fmt.Errorf("open netlink socket in namespace %s: %w", path, err)
		}
		done <- result{nl: h, err: err}
	}()
	r := <-done
	if r.err != nil {
		if uerr := unmountRemove(path); uerr != nil {
			return netnsRef{}, fmt.Errorf("%w (and undoing it: %w)", r.err, uerr)
		}
		return netnsRef{}, r.err
	}
	fd, err := netns.GetFromPath(path)
	if err != nil {
		r.nl.Close()
		err = fmt.Errorf("open network namespace %s: %w", path, err)
		if uerr := unmountRemove(path); uerr != nil {
			return netnsRef{}, fmt.Errorf("%w (and undoing it: %w)", err, uerr)
		}
		return netnsRef{}, err
	}
	return netnsRef{fd: fd, nl: r.nl}, nil
}

// unmountRemove detaches every mount at path and removes the file; a path
// that is not mounted or does not exist is fine.
func unmountRemove(path string) error {
	for range 16 { // mounts may be stacked; each unmount peels one
		err := unix.Unmount(path, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break // not a mount point (any more), or no such file
		}
		if err != nil {
			return fmt.Errorf("unmount netns %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns file: %w", err)
	}
	return nil
}

// deleteLink deletes the named link; a missing one is fine.
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find veth %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete veth %s: %w", name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}
