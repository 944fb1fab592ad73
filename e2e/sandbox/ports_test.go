package sandbox

import (
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
)

// portEvent waits for the port event of sandbox id ("" for the guest)
// with this action, protocol and port, passing over the rest: other
// tests' sandboxes listen too.
func (s *eventStream) portEvent(id string, action api.EventAction, protocol string, port int) api.Event {
	s.t.Helper()
	for {
		ev := s.next()
		if ev.SandboxId != id || ev.Action != action || ev.Attributes == nil {
			continue
		}
		at := *ev.Attributes
		if at["protocol"] == protocol && at["port"] == strconv.Itoa(port) {
			return ev
		}
	}
}

// TestPortEvents: a TCP listener and a bound UDP socket in the guest (the
// test shares the agent's network namespace), and a listener in a bridged
// sandbox, each produce port.open with its address, and port.close when
// they go. How soon after the bind each event arrived is logged; the
// watcher's own latency is its benchmark's (go test -bench ./portwatch/).
func TestPortEvents(t *testing.T) {
	t.Parallel()
	a := sharedAgent(t)
	a.LogOnFailure(t)
	evs := a.events(t, api.StreamEventsParams{})

	began := time.Now()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpPort := ln.Addr().(*net.TCPAddr).Port
	open := evs.portEvent("", "port.open", "tcp", tcpPort)
	t.Logf("the guest's TCP listener: port.open %v after listen", time.Since(began).Round(time.Millisecond))
	if (*open.Attributes)["address"] != "127.0.0.1" {
		t.Errorf("port.open of the guest's listener: %+v, want address 127.0.0.1", open)
	}
	began = time.Now()
	ln.Close()
	evs.portEvent("", "port.close", "tcp", tcpPort)
	t.Logf("the guest's TCP listener: port.close %v after close", time.Since(began).Round(time.Millisecond))

	began = time.Now()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpPort := pc.LocalAddr().(*net.UDPAddr).Port
	evs.portEvent("", "port.open", "udp", udpPort)
	t.Logf("the guest's UDP socket: port.open %v after bind", time.Since(began).Round(time.Millisecond))
	pc.Close()
	evs.portEvent("", "port.close", "udp", udpPort)

	const id, port = "ports", 7070
	a.createBridged(t, id)
	run := a.startDetached(t, id, false, "nc", "-l", "-p", strconv.Itoa(port))
	began = time.Now()
	open = evs.portEvent(id, "port.open", "tcp", port)
	t.Logf("the sandbox's listener: port.open %v after the run started", time.Since(began).Round(time.Millisecond))
	if addr := (*open.Attributes)["address"]; addr != "0.0.0.0" && addr != "::" {
		t.Errorf("port.open of nc -l in the sandbox: %+v, want the unspecified address", open)
	}
	if r, err := a.Client(t).SignalRunWithResponse(reqCtx(t), id, run.RunId, api.SignalRequest{Signal: "SIGKILL"}); err != nil || r.StatusCode() != http.StatusOK {
		t.Fatalf("SIGKILL to the listener: %v %v", err, r)
	}
	evs.portEvent(id, "port.close", "tcp", port)
	a.remove(t, id, false)
}
