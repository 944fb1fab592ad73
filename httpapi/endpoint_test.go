package httpapi

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		raw     string
		want    Endpoint
		wantErr string
	}{
		{raw: "tcp://:8080", want: Endpoint{Scheme: "tcp", Address: "127.0.0.1:8080"}},
		{raw: "tcp://0.0.0.0:8080", want: Endpoint{Scheme: "tcp", Address: "0.0.0.0:8080"}},
		{raw: "tcp://[::1]:0", want: Endpoint{Scheme: "tcp", Address: "[::1]:0"}},
		{raw: "unix:///run/arcbox/agent.sock", want: Endpoint{Scheme: "unix", Address: "/run/arcbox/agent.sock"}},
		{raw: "vsock://:1024", want: Endpoint{Scheme: "vsock", Port: 1024}},
		{raw: "vsock://3:1024", want: Endpoint{Scheme: "vsock", CID: 3, HasCID: true, Port: 1024}},
		{raw: "tcp://:http", wantErr: "invalid port"},
		{raw: "tcp://localhost", wantErr: "want tcp://HOST:PORT"},
		{raw: "tcp://:70000", wantErr: "not a number from 0 to 65535"},
		{raw: "unix://relative.sock", wantErr: "want unix:///absolute/path"},
		{raw: "vsock://:0", wantErr: "positive"},
		{raw: "vsock://x:1024", wantErr: "CID"},
		{raw: "vsock://1024", wantErr: "want vsock://[CID]:PORT"},
		{raw: "http://:80", wantErr: "scheme must be vsock, unix or tcp"},
		{raw: ":8080", wantErr: "listener"},
		{raw: "unix:///run/a.sock?mode=0600", wantErr: "without a user, a query or a fragment"},
		{raw: "tcp://user@:8080", wantErr: "without a user"},
		{raw: "vsock://:1024#x", wantErr: "fragment"},
		{raw: "unix:///run/a%00.sock", wantErr: "want unix:///absolute/path"},
		{raw: "tcp://::0", wantErr: "neither an IP address"},
		{raw: "tcp://a_b:80", wantErr: "neither an IP address"},
		{raw: "tcp://localhost:8080", want: Endpoint{Scheme: "tcp", Address: "localhost:8080"}},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			got, err := ParseEndpoint(tt.raw)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), tt.raw) {
					t.Fatalf("err = %v, want one naming %q and containing %q", err, tt.raw, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.want.URL = tt.raw
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "agent.sock")

	ln, err := listenUnix(path, NoGroup)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode %o, want 600", perm)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	// A live server's socket is never taken over.
	if _, err := listenUnix(path, NoGroup); err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Errorf("second bind on a live socket: err = %v", err)
	}

	// A stale socket (no one answers) is replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln2, err := listenUnix(path, NoGroup)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln2.Close()

	// A file that is not a socket is never removed.
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(plain, NoGroup); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("bind over a plain file: err = %v", err)
	}
	if data, _ := os.ReadFile(plain); string(data) != "data" {
		t.Error("the plain file was changed")
	}
}
