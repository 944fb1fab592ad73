package lifecycle

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// prepareSystem is the seed agent's ensure_runtime_prerequisites: what
// dockerd and containerd need from a bare guest (cgroup2, devpts, /dev/shm,
// writable /tmp and /run, ip_forward, overlay, and a clock synced when an
// NTP server is configured). Every path is under Config.SystemRoot. Nothing
// here is fatal: it returns notes on what it did and what failed.
func (r *Runtime) prepareSystem(ctx context.Context) []string {
	root := r.cfg.SystemRoot
	at := func(path string) string { return filepath.Join(root, path) }
	var notes []string
	mount := func(what, source, target, fstype string, flags uintptr, data string) {
		if err := os.MkdirAll(target, 0o755); err != nil {
			notes = append(notes, fmt.Sprintf("mkdir %s failed(%v)", target, err))
			return
		}
		if err := unix.Mount(source, target, fstype, flags, data); err != nil {
			notes = append(notes, fmt.Sprintf("mount %s on %s failed(%v)", what, target, err))
			return
		}
		notes = append(notes, fmt.Sprintf("mounted %s on %s", what, target))
	}

	// The cgroup2 unified hierarchy (dockerd needs it).
	if !exists(at("/sys/fs/cgroup/cgroup.controllers")) {
		mount("cgroup2", "cgroup2", at("/sys/fs/cgroup"), "cgroup2", 0, "")
	}
	// devpts, for pseudo-terminals.
	if !exists(at("/dev/pts/ptmx")) {
		mount("devpts", "devpts", at("/dev/pts"), "devpts", unix.MS_NOEXEC|unix.MS_NOSUID, "gid=5,mode=0620")
	}
	// /dev/shm.
	if !exists(at("/dev/shm")) {
		mount("tmpfs", "shm", at("/dev/shm"), "tmpfs", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, "")
	}
	// Writable /tmp and /run.
	for _, d := range []struct{ path, mode string }{{"/tmp", "1777"}, {"/run", "0755"}} {
		dir := at(d.path)
		if !exists(dir) || readOnly(dir) {
			mount("tmpfs", "tmpfs", dir, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, "mode="+d.mode)
		}
	}
	// IPv4 forwarding, so containers' traffic is routed out.
	if err := os.WriteFile(at("/proc/sys/net/ipv4/ip_forward"), []byte("1\n"), 0o644); err != nil {
		notes = append(notes, fmt.Sprintf("ip_forward failed(%v)", err))
	} else {
		notes = append(notes, "enabled ip_forward")
	}
	// The overlay module, for the overlay2 storage driver.
	if !exists(at("/sys/module/overlay")) {
		notes = append(notes, r.loadOverlay(ctx, at))
	}
	// A one-shot clock sync: TLS fails with a clock at the epoch.
	if r.cfg.NTPServer != "" {
		nctx, cancel := context.WithTimeout(ctx, r.ntpTimeout)
		err := r.runTool(nctx, "busybox", "ntpd", "-q", "-n", "-p", r.cfg.NTPServer)
		cancel()
		if err != nil {
			notes = append(notes, fmt.Sprintf("ntp failed(%v)", err))
		} else {
			notes = append(notes, "ntp synced with "+r.cfg.NTPServer)
		}
	}
	return notes
}

// loadOverlay loads the overlay module with modprobe, or else with insmod
// from the running kernel's module tree.
func (r *Runtime) loadOverlay(ctx context.Context, at func(string) string) string {
	err := r.runTool(ctx, "modprobe", "overlay")
	if err == nil {
		return "loaded overlay module"
	}
	var uts unix.Utsname
	if uerr := unix.Uname(&uts); uerr != nil {
		return fmt.Sprintf("modprobe overlay failed(%v); uname failed(%v)", err, uerr)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		ko := at(filepath.Join("/lib/modules", release, "kernel/fs/overlayfs/overlay"+ext))
		if !exists(ko) {
			continue
		}
		if ierr := r.runTool(ctx, "insmod", ko); ierr != nil {
			return fmt.Sprintf("modprobe overlay failed(%v); insmod %s failed(%v)", err, ko, ierr)
		}
		return "insmod overlay from " + ko
	}
	return fmt.Sprintf("modprobe overlay failed(%v); overlay module not found", err)
}

// readOnly reports whether dir is on a read-only mount.
func readOnly(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Flags&unix.ST_RDONLY != 0
}

// runTool runs a short command through Config.StartProcess and waits for
// it; a failure carries the command's output.
func (r *Runtime) runTool(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, findTool(name), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := r.cfg.StartProcess(cmd); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		if msg := strings.TrimSpace(out.String()); msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}

// findTool finds a system tool on PATH or, for an agent started with no
// PATH (PID 1), in the standard directories.
func findTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range filepath.SplitList(standardPath) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return name
}
