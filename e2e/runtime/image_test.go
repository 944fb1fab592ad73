package runtime

import (
	"debug/elf"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/arcbox/arcbox-agent/internal/testenv"
	"github.com/arcbox/arcbox-agent/internal/testregistry"
)

// applets are the commands the image links to busybox.
var applets = []string{"sh", "echo", "cat", "sleep", "touch", "ls"}

// busyboxImage is a one-layer image made from the machine's static
// busybox (busybox-static): /bin/busybox, links to it, /tmp, and a config
// with PATH and a default command.
func busyboxImage(t testing.TB, busybox string) v1.Image {
	t.Helper()
	if f, err := elf.Open(busybox); err == nil {
		dynamic := f.Section(".interp") != nil
		f.Close()
		if dynamic {
			testenv.RequireFile(t, busybox+" as a static binary (busybox-static)")
		}
	}
	return testregistry.Busybox{
		Path:    busybox,
		Applets: applets,
		Dirs:    []string{"dev", "proc", "sys"},
		Config:  v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"/bin/sh"}},
	}.Image(t)
}
