package httpapi

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestUnixSocketIsBornPrivate: the socket file is 0600 the moment bind
// makes it, before listenUnix's chmod, whatever the umask allows.
func TestUnixSocketIsBornPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "born.sock")
	ln, err := bindUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket born with mode %04o, want 0600", perm)
	}
}

func TestUnixSocketModes(t *testing.T) {
	dir := t.TempDir()
	private, err := listenUnix(filepath.Join(dir, "private.sock"), NoGroup)
	if err != nil {
		t.Fatal(err)
	}
	defer private.Close()
	// Root may give the socket to any group; anyone else to their own.
	gid := os.Getgid()
	if os.Geteuid() == 0 {
		gid = 4242
	}
	shared, err := listenUnix(filepath.Join(dir, "shared.sock"), gid)
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	for _, tt := range []struct {
		name    string
		perm    os.FileMode
		wantGID int
	}{
		{"private.sock", 0o600, os.Getegid()},
		{"shared.sock", 0o660, gid},
	} {
		fi, err := os.Stat(filepath.Join(dir, tt.name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != tt.perm || int(st.Gid) != tt.wantGID || int(st.Uid) != os.Geteuid() {
			t.Errorf("%s: mode %04o owner %d:%d, want %04o %d:%d", tt.name, fi.Mode().Perm(), st.Uid, st.Gid, tt.perm, os.Geteuid(), tt.wantGID)
		}
	}
}
