package agentaddr_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/agentaddr"
)

// TestParseDials: a unix and a TCP address each reach their own real
// listener, whatever network and address the caller passes.
func TestParseDials(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	unixL, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer unixL.Close()
	tcpL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpL.Close()
	for _, tc := range []struct {
		addr, base string
		l          net.Listener
	}{
		{"unix://" + sock, "http://agent", unixL},
		{"tcp://" + tcpL.Addr().String(), "http://" + tcpL.Addr().String(), tcpL},
	} {
		base, dial, err := agentaddr.Parse(tc.addr)
		if err != nil || base != tc.base {
			t.Fatalf("Parse(%q) = %q, %v; want %q", tc.addr, base, err, tc.base)
		}
		accepted := make(chan string, 1)
		go func() {
			c, err := tc.l.Accept()
			if err != nil {
				accepted <- err.Error()
				return
			}
			defer c.Close()
			b, _ := io.ReadAll(c)
			accepted <- string(b)
		}()
		c, err := dial(context.Background(), "tcp", "elsewhere:1")
		if err != nil {
			t.Fatalf("dial %s: %v", tc.addr, err)
		}
		fmt.Fprint(c, "hello")
		c.Close()
		if got := <-accepted; got != "hello" {
			t.Errorf("%s: the listener read %q, want hello", tc.addr, got)
		}
	}
}

// TestParseRefuses: each bad address is refused naming it and what is
// wrong; the good ones of every scheme parse.
func TestParseRefuses(t *testing.T) {
	for _, good := range []string{"unix:///run/arcbox/agent.sock", "tcp://127.0.0.1:8080", "tcp://[::1]:1", "tcp://localhost:80", "vsock://3:1024", "vsock://1:1024"} {
		if _, _, err := agentaddr.Parse(good); err != nil {
			t.Errorf("Parse(%q): %v", good, err)
		}
	}
	for bad, why := range map[string]string{
		"":                        "unknown scheme",
		"/run/agent.sock":         "unknown scheme",
		"http://127.0.0.1:80":     "unknown scheme",
		"unix://relative/path":    "absolute path",
		"unix:///a?x=1":           "query",
		"tcp://127.0.0.1":         "host and a port",
		"tcp://:8080":             "host and a port",
		"tcp://127.0.0.1:99999":   "0 to 65535",
		"tcp://u:p@127.0.0.1:80":  "user",
		"vsock://:1024":           "CID and a port",
		"vsock://x:1024":          "CID",
		"vsock://3:0":             "positive",
		"vsock://3:1024/path":     "CID and a port",
		"tcp://127.0.0.1:80#frag": "fragment",
	} {
		_, _, err := agentaddr.Parse(bad)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) || !strings.Contains(err.Error(), why) {
			t.Errorf("Parse(%q): %v; want an error naming it and saying %q", bad, err, why)
		}
	}
}
