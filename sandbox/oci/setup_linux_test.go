package oci

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// hideHybridCgroup2 covers the cgroup2 part of a hybrid cgroup layout with
// an empty tmpfs, in this (private) mount namespace: crun refuses hybrid
// hosts whose cgroup2 hierarchy has controllers. The agent's VM runs pure
// cgroup v2, where this does not arise. crun leaves a directory and a
// file per sandbox there (a tmpfs is no cgroup filesystem: it cannot
// remove them), hence the size; the leak check skips it.
func hideHybridCgroup2() error {
	if !hybridCgroupRefusedByCrun() {
		return nil
	}
	return unix.Mount("tmpfs", "/sys/fs/cgroup/unified", "tmpfs", 0, "size=256m,mode=755")
}

// removeTestCgroups removes the (empty) parent cgroups the tests made.
func removeTestCgroups(parent string) {
	for _, d := range cgroupDirs(parent) {
		os.Remove(d)
	}
}

// privilegedSetup prepares what the privileged tests share: a static init
// binary (the race-enabled test binary is dynamically linked, so it cannot
// be a sandbox's init), a busybox root filesystem, and on a hybrid cgroup
// host a cgroup layout crun accepts (in this mount namespace only).
func privilegedSetup(dir string) error {
	if err := hideHybridCgroup2(); err != nil {
		return err
	}
	testInitPath = filepath.Join(dir, "arcbox-init")
	cmd := exec.Command("go", "build", "-o", testInitPath, "./internal/initbin")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the static init: %v: %s", err, out)
	}
	if bb, err := exec.LookPath("busybox"); err == nil {
		testRootfs = filepath.Join(dir, "rootfs")
		if err := EnsureBusyboxRootfs(testRootfs, bb); err != nil {
			return err
		}
	}
	return nil
}
