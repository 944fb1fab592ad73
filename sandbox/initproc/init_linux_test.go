package initproc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"tool": 0o755, "data": 0o644} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"HOME=/root", "PATH=/nonexistent:" + dir}
	for _, tt := range []struct {
		file, want, err string
	}{
		{"tool", filepath.Join(dir, "tool"), ""},
		{"data", "", "executable file not found"}, // not executable
		{"sub", "", "executable file not found"},  // a directory
		{"missing", "", `"missing": executable file not found in $PATH`},
		{"./rel/x", "./rel/x", ""}, // a slash: as given
	} {
		got, err := lookPath(tt.file, env)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("lookPath(%q) = %q, %v; want %q, %q", tt.file, got, err, tt.want, tt.err)
		}
	}
	// No PATH in the process's environment: the standard one.
	if got, err := lookPath("sh", nil); err != nil || !strings.HasSuffix(got, "/sh") {
		t.Errorf("lookPath(sh) without PATH = %q, %v", got, err)
	}
}
