package network

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

// ResolvConf returns the resolv.conf to bind into a sandbox, built from the
// host's (Config.ResolvConf): its nameserver lines whose address a sandbox
// can reach, and its search, domain and options lines. Nameservers on
// loopback (127.0.0.0/8, ::1, such as systemd-resolved's 127.0.0.53), the
// unspecified address, scoped addresses (fe80::1%eth0) and unparsable ones
// are dropped. When no nameserver remains, or the host file is missing, the
// result is only a comment saying so.
func (m *Manager) ResolvConf() ([]byte, error) {
	path := m.cfg.ResolvConf
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return noNameserver(path, "does not exist"), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read host resolv.conf: %w", err)
	}
	return filterResolvConf(path, data), nil
}

// filterResolvConf keeps the lines of a host resolv.conf that make sense in
// a sandbox; path is named in the header comment.
func filterResolvConf(path string, data []byte) []byte {
	var kept []string
	nameservers, dropped := 0, 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if len(fields) < 2 || !reachableNameserver(fields[1]) {
				dropped++
				continue
			}
			nameservers++
			kept = append(kept, "nameserver "+fields[1])
		case "search", "domain", "options":
			kept = append(kept, line)
		}
	}
	if nameservers == 0 {
		why := "lists no nameserver"
		if dropped > 0 {
			why = "lists only nameservers a sandbox cannot reach (loopback or scoped addresses)"
		}
		return noNameserver(path, why)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Made by arcbox from the host's %s", path)
	if dropped > 0 {
		fmt.Fprintf(&b, "; %d loopback or unusable nameserver(s) dropped", dropped)
	}
	b.WriteString(".\n")
	for _, l := range kept {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// reachableNameserver reports whether a sandbox behind the bridge can reach a
// nameserver at s.
func reachableNameserver(s string) bool {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return false
	}
	a = a.Unmap()
	return !a.IsLoopback() && !a.IsUnspecified() && a.Zone() == ""
}

func noNameserver(path, why string) []byte {
	return fmt.Appendf(nil, "# No usable nameserver: the host's %s %s.\n"+
		"# Name resolution will fail in this sandbox.\n", path, why)
}
