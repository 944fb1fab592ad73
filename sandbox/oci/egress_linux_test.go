package oci

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The guest's uplink in TestOCIEgress: the test's namespace is the guest,
// egressUplink its address on egressUplinkIf and its default route's
// gateway egressOutside, in a namespace of its own: the outside.
const (
	egressUplinkIf = "upl0"
	egressUplink   = "198.18.0.1"
	egressOutside  = "198.18.0.2"
	outsideName    = "outside.test" // the outside's nameserver answers it
)

// TestOCIEgress: a bridged sandbox reaches a server beyond the guest
// through the NAT (the server sees the guest's uplink address, and has no
// route back to the sandbox range) and resolves names with the guest's
// nameserver, there too; it cannot reach a service of the guest itself;
// a sandbox with `network: none` reaches nothing. On each runtime; every
// packet stays in namespaces the test made.
func TestOCIEgress(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			out := newOutside(t)
			resolv := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(resolv, []byte("nameserver "+egressOutside+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			e := newOCIEnv(t, rt, func(c *Config) {
				c.BridgeCIDR = sandbox.DefaultBridgeCIDR
				c.ResolvConf = resolv
			})
			bridged := e.create(sandbox.Spec{ID: "egress-" + rt, NetworkMode: "bridge"})
			none := e.create(sandbox.Spec{ID: "none-" + rt, NetworkMode: "none"})

			// wget without -T: Debian's busybox 1.35 crashes with it.
			// The run's timeout bounds a hang only.
			url := fmt.Sprintf("http://%s:%d/", egressOutside, out.httpPort)
			wget := sandbox.Process{Cmd: []string{"wget", "-q", "-O", "-", url}, Timeout: time.Minute}
			if got, errOut, code := e.run(bridged.ID, wget); code != 0 || got != egressUplink {
				t.Errorf("the outside saw the bridged sandbox come from %q (exit %d, %q), want the guest's uplink %s", got, code, errOut, egressUplink)
			}
			got := e.sh(bridged.ID, "nslookup "+outsideName)
			if _, answer, ok := strings.Cut(got, "Name:"); !ok || !strings.Contains(answer, egressOutside) {
				t.Errorf("nslookup %s in the bridged sandbox:\n%s", outsideName, got)
			}
			if from := out.dnsFrom.Load(); from == nil || *from != egressUplink {
				t.Errorf("the nameserver's query came from %v, want %s", from, egressUplink)
			}

			// A service of the guest (the agent's API, say) on every
			// address: refused at once.
			ln, err := net.Listen("tcp4", "0.0.0.0:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			for _, addr := range []string{bridged.Gateway, egressUplink} {
				_, errOut, code := e.run(bridged.ID, sandbox.Process{Cmd: []string{"nc", addr, fmt.Sprint(port)}, Timeout: time.Minute})
				if code == 0 || !strings.Contains(errOut, "refused") {
					t.Errorf("nc to the guest's %s:%d from the sandbox: exit %d, %q; want connection refused", addr, port, code, errOut)
				}
			}

			served := out.served.Load()
			_, errOut, code := e.run(none.ID, wget)
			if code == 0 || !strings.Contains(errOut, "unreachable") {
				t.Errorf("wget from the network: none sandbox: exit %d, %q; want network unreachable", code, errOut)
			}
			if got := out.served.Load(); got != served {
				t.Errorf("the outside served the network: none sandbox")
			}
		})
	}
}

// outside is the guest's uplink network: a namespace with an HTTP server
// that answers the client's address, and a nameserver.
type outside struct {
	httpPort int
	served   atomic.Int64           // HTTP requests answered
	dnsFrom  atomic.Pointer[string] // the address the last query came from
}

// newOutside makes the outside namespace, the veth between it and the
// test's (the guest's uplink, its default route), and the servers in it.
func newOutside(t *testing.T) *outside {
	t.Helper()
	fd, err := newNetnsFd()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: egressUplinkIf}, PeerName: "out0", PeerNamespace: netlink.NsFd(fd)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth %s: %v", egressUplinkIf, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(egressUplinkIf); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete veth %s: %v", egressUplinkIf, err)
			}
		}
	})
	if err := linkUp(egressUplinkIf, egressUplink+"/30"); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(egressOutside)}); err != nil {
		t.Fatalf("default route via %s: %v", egressOutside, err)
	}

	o := &outside{}
	var ln net.Listener
	var pc net.PacketConn
	err = inNetnsFd(fd, func() error {
		if err := linkUp("out0", egressOutside+"/30"); err != nil {
			return err
		}
		if err := linkUp("lo", ""); err != nil {
			return err
		}
		var err error
		if ln, err = net.Listen("tcp4", egressOutside+":0"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", egressOutside+":53")
		return err
	})
	if err != nil {
		t.Fatalf("the outside: %v", err)
	}
	o.httpPort = ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		o.served.Add(1)
		fmt.Fprint(w, host)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	go o.serveDNS(pc)
	t.Cleanup(func() { pc.Close() })
	return o
}

// serveDNS answers queries for outsideName's A record with the outside's
// address, and every other query with no answer, until pc is closed.
func (o *outside) serveDNS(pc net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		host, _, _ := net.SplitHostPort(from.String())
		o.dnsFrom.Store(&host)
		if reply := dnsAnswer(buf[:n]); reply != nil {
			_, _ = pc.WriteTo(reply, from)
		}
	}
}

// dnsAnswer is the reply to a one-question query; nil if q is not one.
func dnsAnswer(q []byte) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	var labels []string
	i := 12
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if l > 63 || i+1+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	if i+5 > len(q) {
		return nil
	}
	question := q[12 : i+5] // the name, its end, type and class
	qtype := binary.BigEndian.Uint16(q[i+1:])
	match := strings.EqualFold(strings.Join(labels, "."), outsideName) && qtype == 1
	r := append([]byte{}, q[:2]...)                   // id
	r = append(r, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0) // a response, recursion available; one question
	r = append(r, question...)
	if match {
		r[7] = 1 // one answer
		r = append(r, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
		r = append(r, net.ParseIP(egressOutside).To4()...)
	}
	return r
}

// newNetnsFd makes a network namespace and returns a descriptor of it.
// The thread that made it never leaves it: it ends with its goroutine.
func newNetnsFd() (int, error) {
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is abandoned
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("unshare network namespace: %w", err)}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		done <- result{fd, err}
	}()
	r := <-done
	return r.fd, r.err
}

// inNetnsFd runs fn on a fresh thread that has joined the namespace fd,
// and abandons the thread. Sockets fn opens stay in that namespace.
func inNetnsFd(fd int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is abandoned
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// linkUp gives the link addr ("" for none) and brings it up, in the
// calling thread's namespace.
func linkUp(name, addr string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if addr != "" {
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", addr, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}
