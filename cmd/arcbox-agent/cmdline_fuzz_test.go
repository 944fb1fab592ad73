package main

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// FuzzKernelCmdline reads arbitrary bytes as the kernel command line and
// resolves the configuration from it alone (no flags, no environment). It
// checks that the arcbox.* keys read are well formed (no white space, no
// empty value) and survive being written back; that the configuration
// either resolves or fails naming the command-line key at fault; and that
// each setting the command line gives is taken from it, verbatim or parsed,
// except the lenient Docker port, which falls back to its default with a
// warning.
func FuzzKernelCmdline(f *testing.F) {
	for _, s := range []string{
		"console=ttyS0 quiet",
		"BOOT_IMAGE=/vmlinuz root=/dev/vda rw console=hvc0 arcbox.docker_data_device=/dev/vdb arcbox.guest_docker_vsock_port=2375\n",
		"arcbox.modules=virtio_pci,vsock_loopback,,overlay arcbox.net_address=eth0=10.0.2.15/24,eth1=192.168.64.3/24",
		"arcbox.docker_data_device=/dev/vdc arcbox.docker_data_device=/dev/vdz",              // the first wins
		"arcbox.docker_data_device= arcbox.docker_data_device=/dev/vdc",                      // an empty value does not count
		"arcbox.guest_docker_vsock_port=x arcbox.guest_docker_vsock_port=0",                  // lenient: ignored
		"arcbox.guest_docker_vsock_port=4294967296",                                          // past 32 bits
		"arcbox.net_address=eth0=10.0.2.15 arcbox.net_address=eth0:1=10.0.0.1/8",             // bad, then ignored
		"arcbox.net_address=eth0=fd00::1/64",                                                 // IPv6
		"arcbox.modules= arcbox.modules=, arcbox.=x =y arcbox.x",                             // empty lists, odd tokens
		`arcbox.docker_data_device="/dev/my disk" arcbox.modules="virtio_pci"`,               // quotes, as the kernel allows
		"arcbox.docker_data_device=/dev/vdb -- arcbox.docker_data_device=/dev/vdc init args", // after -- is init's
		"\tarcbox.docker_data_device=/dev/vdb\r\n\x00arcbox.modules=a\u00a0b\u2028c",         // odd white space
		"",
	} {
		f.Add([]byte(s))
	}
	// Files for every input: they run one at a time in each process.
	dir := f.TempDir()
	path, again := filepath.Join(dir, "cmdline"), filepath.Join(dir, "again")
	f.Fuzz(func(t *testing.T, cmdline []byte) {
		if err := os.WriteFile(path, cmdline, 0o644); err != nil {
			t.Fatal(err)
		}
		keys := readCmdline(path)
		var tokens []string
		plain := map[string]string{} // the values that can be written back quoted
		for k, v := range keys {
			if !strings.HasPrefix(k, "arcbox.") || v == "" || strings.ContainsFunc(k, unicode.IsSpace) {
				t.Fatalf("read %q=%q", k, v)
			}
			if !strings.Contains(v, `"`) {
				tokens = append(tokens, k+`="`+v+`"`)
				plain[k] = v
			}
		}
		slices.Sort(tokens)
		if err := os.WriteFile(again, []byte(strings.Join(tokens, " ")), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := readCmdline(again); !maps.Equal(got, plain) {
			t.Fatalf("%q read back as %q", plain, got)
		}

		var warned []string
		c, err := loadConfig([]string{"--cmdline-file", path}, envOf(nil), nil, func(msg string, kv ...any) { warned = append(warned, msg) })
		if err != nil {
			if !strings.Contains(err.Error(), "from kernel command line arcbox.") {
				t.Fatalf("error %q does not name the command-line key", err)
			}
			return
		}
		for _, s := range new(config).settings() {
			v, given := keys[s.cmdline]
			if s.cmdline == "" || !given {
				continue
			}
			from := c.Sources[s.name] == "kernel command line "+s.cmdline
			fellBack := s.lenient && c.Sources[s.name] == "default" && len(warned) > 0
			if accepted := from || fellBack; !accepted {
				t.Fatalf("%s=%q given, but --%s comes from %s (warnings %q)", s.cmdline, v, s.name, c.Sources[s.name], warned)
			}
			switch s.name {
			case "data-device":
				if c.DataDevice != v {
					t.Fatalf("%s=%q gave data device %q", s.cmdline, v, c.DataDevice)
				}
			case "guest-docker-vsock-port":
				if p, err := strconv.ParseUint(v, 10, 32); from != (err == nil && p > 0) || from && uint64(c.GuestDockerVsockPort) != p {
					t.Fatalf("%s=%q gave port %d from %s", s.cmdline, v, c.GuestDockerVsockPort, c.Sources[s.name])
				}
			case "modules":
				if !slices.Equal(c.Modules, splitList(v)) {
					t.Fatalf("%s=%q gave modules %q", s.cmdline, v, c.Modules)
				}
			case "net-address":
				if len(c.NetAddresses) != len(splitList(v)) {
					t.Fatalf("%s=%q gave addresses %v", s.cmdline, v, c.NetAddresses)
				}
			}
		}
	})
}
