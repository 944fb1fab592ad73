package oci

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/arcbox/arcbox-agent/sandbox/internal/atomicfile"
)

// The users and groups of the busybox root filesystem.
const (
	busyboxPasswd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	busyboxGroup  = "root:x:0:\nnogroup:x:65534:\n"
)

// EnsureBusyboxRootfs makes dir a minimal root filesystem from a static
// busybox, unless dir exists already: bin/busybox and a symlink to it for
// each applet (`busybox --list-full`), etc/passwd and etc/group (root and
// nobody), tmp, and the mount points proc, sys and dev. It builds in a
// temporary directory beside dir and renames it into place, so a crash or
// a concurrent call never leaves half a root filesystem.
func EnsureBusyboxRootfs(dir, busyboxPath string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := checkStatic(busyboxPath); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := exec.CommandContext(ctx, busyboxPath, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("%s --list-full: %w", busyboxPath, err)
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := buildBusyboxRootfs(tmp, busyboxPath, string(list)); err != nil {
		return fmt.Errorf("busybox root filesystem %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(dir); serr == nil {
			return nil // made by a concurrent call
		}
		return err
	}
	return atomicfile.SyncDir(parent)
}

func buildBusyboxRootfs(root, busyboxPath, list string) error {
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	dirs := []struct {
		name string
		mode fs.FileMode
	}{
		{"bin", 0o755}, {"sbin", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
		{"etc", 0o755}, {"root", 0o700}, {"tmp", 0o777 | fs.ModeSticky},
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"home", 0o755}, {"var/tmp", 0o777 | fs.ModeSticky},
	}
	for _, d := range dirs {
		p := filepath.Join(root, d.name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}
	if err := copyFile(busyboxPath, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	for _, line := range strings.Split(list, "\n") {
		rel := path.Clean("/" + strings.TrimSpace(line))
		if rel == "/" || rel == "/bin/busybox" {
			continue
		}
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte(busyboxPasswd), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(root, "etc", "group"), []byte(busyboxGroup), 0o644)
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// checkStatic refuses a dynamically linked binary: in a sandbox it would
// find no loader or libraries.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; a sandbox needs a static binary", p)
		}
	}
	return nil
}
