package oci

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sandbox/internal/sandboxtest"
	"github.com/arcbox/arcbox-agent/sandbox/network"
)

// TestOCIBridgeNetwork gives two sandboxes bridge networking and checks
// what a user sees: an address from the configured range in the first
// answer and in inspect, eth0 with it and a default route via the gateway,
// a resolv.conf, the agent reaching a server inside a sandbox at its
// address, a sandbox refused by the gateway, sandboxes reaching each other,
// and removal releasing the address and the veth. It runs in the test's
// own network namespace (RunIsolated).
func TestOCIBridgeNetwork(t *testing.T) {
	e := newOCIEnv(t, "runc", func(c *Config) {
		c.BridgeCIDR = sandbox.DefaultBridgeCIDR
	})
	ctx := context.Background()
	info, _, err := e.m.Create(ctx, sandbox.Spec{ID: "web", NetworkMode: "bridge"})
	if err != nil {
		t.Fatal(err)
	}
	e.track("web")
	if info.IPAddress != "172.20.0.2" || info.Gateway != "172.20.0.1" {
		t.Errorf("create answered %+v; want 172.20.0.2 via 172.20.0.1", info)
	}
	e.expect("web", sandbox.ActionReady)
	other := e.create(sandbox.Spec{ID: "peer", NetworkMode: "tap"})
	if other.IPAddress != "172.20.0.3" || other.NetworkMode != sandbox.NetworkBridge {
		t.Errorf("second sandbox: %+v", other)
	}
	if got, _ := e.m.Get("web"); got.IPAddress != info.IPAddress || got.NetworkMode != sandbox.NetworkBridge {
		t.Errorf("inspect: %+v", got)
	}

	if out := e.sh("web", "ip -o -4 addr show eth0 | awk '{print $4}'; ip route | grep ^default"); !strings.HasPrefix(out, "172.20.0.2/16\ndefault via 172.20.0.1 dev eth0") {
		t.Errorf("eth0 and the default route in the sandbox:\n%s", out)
	}
	if out := e.sh("web", "cat /etc/resolv.conf"); !strings.Contains(out, "#") && !strings.Contains(out, "nameserver") {
		t.Errorf("resolv.conf: %q", out)
	}

	// The agent reaches a server in the sandbox at its address.
	go func() {
		_, _ = e.m.Run(ctx, "web", sandbox.Process{Cmd: []string{"sh", "-c", "echo hello from web | nc -l -p 8080"}}, nil)
	}()
	var conn net.Conn
	sandboxtest.WaitFor(t, "the server in the sandbox", func() bool {
		conn, err = net.DialTimeout("tcp", "172.20.0.2:8080", time.Second)
		return err == nil
	})
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || line != "hello from web\n" {
		t.Errorf("from the server in the sandbox: %q, %v", line, err)
	}
	e.waitState("web", sandbox.StateReady)

	// A sandbox opens no connection to the guest (the gateway is the
	// agent's side of the bridge): refused at once (TestOCIEgress checks
	// the rest of the fence). It reaches the other sandbox.
	ln, err := net.Listen("tcp", "172.20.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if _, errOut, code := e.run("peer", sandbox.Process{Cmd: []string{"nc", "172.20.0.1", fmt.Sprint(port)}}); code == 0 || !strings.Contains(errOut, "refused") {
		t.Errorf("nc from the sandbox to the gateway: exit %d, %q; want connection refused", code, errOut)
	}
	go func() {
		_, _ = e.m.Run(ctx, "web", sandbox.Process{Cmd: []string{"sh", "-c", "echo web to peer | nc -l -p 9090"}}, nil)
	}()
	sandboxtest.WaitFor(t, "the peer reaching web", func() bool {
		_, _, code := e.run("peer", sandbox.Process{Cmd: []string{"sh", "-c", "nc 172.20.0.2 9090 | grep -q 'web to peer'"}})
		return code == 0
	})
	e.waitState("web", sandbox.StateReady)

	// Removal releases the veth (checked by the env's cleanup too) and
	// the address: the next sandbox gets it.
	if err := e.m.Remove(ctx, "web", true); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(network.HostIfName("web")); err == nil {
		t.Errorf("the veth of a removed sandbox is still there")
	}
	next := e.create(sandbox.Spec{ID: "next", NetworkMode: "bridge"})
	if next.IPAddress != "172.20.0.2" {
		t.Errorf("after a removal the next sandbox got %s, want the freed 172.20.0.2", next.IPAddress)
	}
}
