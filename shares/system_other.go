//go:build !linux

package shares

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/arcbox/arcbox-agent/disk"
)

var errUnsupported = fmt.Errorf("VirtioFS shares on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// System finds no VirtioFS device, as on any machine that is no Linux VM,
// and cannot mount.
var System = Ops{
	Mount:     func(string, string, Flags, string) error { return errUnsupported },
	Unmount:   func(string) error { return errUnsupported },
	Mkdir:     func(path string) error { return os.Mkdir(path, 0o755) },
	Rmdir:     os.Remove,
	MountInfo: func() ([]disk.MountInfo, error) { return nil, errUnsupported },
	Tags:      func() (TagInfo, error) { return TagInfo{}, nil },
}
