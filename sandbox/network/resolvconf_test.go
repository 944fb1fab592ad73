package network

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		host    string // "" for a missing file
		missing bool
		want    []string // the lines after the header comment
		none    string   // for a comment-only result: text in it
	}{
		{
			name: "public nameservers, search and options kept",
			host: "# comment\n; also a comment\nnameserver 1.1.1.1\nnameserver 2606:4700:4700::1111\nsearch corp.example\noptions edns0 trust-ad\nsortlist 10.0.0.0\n",
			want: []string{"nameserver 1.1.1.1", "nameserver 2606:4700:4700::1111", "search corp.example", "options edns0 trust-ad"},
		},
		{
			name: "loopback dropped",
			host: "nameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 127.1.2.3\ndomain example.org\n",
			want: []string{"nameserver 10.0.0.2", "domain example.org"},
		},
		{
			name: "unspecified, scoped, mapped loopback and garbage dropped",
			host: "nameserver 0.0.0.0\nnameserver fe80::1%eth0\nnameserver ::ffff:127.0.0.1\nnameserver dns.example\nnameserver\n  nameserver   192.168.1.1   # router\n",
			want: []string{"nameserver 192.168.1.1"},
		},
		{
			name: "systemd-resolved stub only",
			host: "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
			none: "only nameservers a sandbox cannot reach",
		},
		{
			name: "no nameserver",
			host: "search example.org\n",
			none: "lists no nameserver",
		},
		{
			name:    "missing file",
			missing: true,
			none:    "does not exist",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if !tt.missing {
				if err := os.WriteFile(path, []byte(tt.host), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cfg := testConfig("172.20.0.0/16")
			cfg.ResolvConf = path
			m, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.ResolvConf()
			if err != nil {
				t.Fatalf("ResolvConf: %v", err)
			}
			got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
			if tt.none != "" {
				for _, l := range got {
					if !strings.HasPrefix(l, "#") {
						t.Fatalf("ResolvConf: got %q, want only comments", out)
					}
				}
				if !strings.Contains(string(out), tt.none) || !strings.Contains(string(out), "No usable nameserver") {
					t.Fatalf("ResolvConf: got %q, want a comment containing %q", out, tt.none)
				}
				return
			}
			if !strings.HasPrefix(got[0], "# ") {
				t.Fatalf("ResolvConf: got %q, want a header comment first", out)
			}
			if strings.Join(got[1:], "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("ResolvConf: got\n%s\nwant lines\n%s", out, strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestResolvConfReadError(t *testing.T) {
	cfg := testConfig("172.20.0.0/16")
	cfg.ResolvConf = t.TempDir() // a directory: reading it fails
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := m.ResolvConf(); err == nil || !strings.Contains(err.Error(), cfg.ResolvConf) {
		t.Fatalf("ResolvConf of a directory: got %q, %v, want an error naming it", out, err)
	}
}
