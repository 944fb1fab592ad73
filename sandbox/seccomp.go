package sandbox

import (
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Errno values the seccomp profile returns; the numbers are the same on
// every Linux architecture the agent runs on.
const (
	errnoEPERM   = 1
	errnoENOSYS  = 38
	cloneNewUser = 0x10000000
)

// seccompDenied are the system calls a sandbox may not make: kernel
// surfaces that workloads do not need and that have a record of privilege
// escalations (keyrings, bpf, perf, userfaultfd, io_uring, new user
// namespaces), plus what needs capabilities a sandbox lacks anyway
// (mounts, modules, clocks, reboot), denied here as defence in depth.
// Unknown names on an architecture are skipped by the runtimes.
var seccompDenied = []string{
	"add_key", "keyctl", "request_key",
	"bpf", "perf_event_open", "userfaultfd",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"unshare", "setns",
	"mount", "umount", "umount2", "pivot_root", "open_tree", "move_mount",
	"fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"create_module", "get_kernel_syms", "query_module",
	"iopl", "ioperm", "swapon", "swapoff", "reboot", "acct",
	"settimeofday", "stime", "clock_settime", "clock_adjtime",
	"syslog", "lookup_dcookie", "quotactl", "quotactl_fd", "vhangup", "nfsservctl",
	"name_to_handle_at", "open_by_handle_at", "uselib", "_sysctl",
}

// seccompProfile allows every system call but the denied ones (EPERM),
// clone with CLONE_NEWUSER (EPERM), and clone3 (ENOSYS, so the C library
// falls back to clone, whose flags a filter can see).
func seccompProfile() *specs.LinuxSeccomp {
	eperm, enosys := uint(errnoEPERM), uint(errnoENOSYS)
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: seccompArches(),
		Syscalls: []specs.LinuxSyscall{
			{Names: seccompDenied, Action: specs.ActErrno, ErrnoRet: &eperm},
			{
				Names: []string{"clone"}, Action: specs.ActErrno, ErrnoRet: &eperm,
				Args: []specs.LinuxSeccompArg{{Index: 0, Value: cloneNewUser, ValueTwo: cloneNewUser, Op: specs.OpMaskedEqual}},
			},
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
}

// seccompArches are the architectures a process on this machine can call
// the kernel as: without the compat ones, their calls would bypass the
// filter's names.
func seccompArches() []specs.Arch {
	switch runtime.GOARCH {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	default:
		return nil
	}
}
