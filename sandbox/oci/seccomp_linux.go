package oci

import (
	"fmt"
	"slices"
	"sync"

	mobyseccomp "github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// errnoEPERM is what the seccomp profile returns for a denied call; the
// number is the same on every Linux architecture the agent runs on.
const errnoEPERM = 1

// seccompDenied are system calls Docker's default profile allows that a
// sandbox may not make: kernel surfaces ordinary workloads do not need and
// that have a record of privilege escalations (keyrings, userfaultfd,
// io_uring), and reading or writing another process's memory by pid.
var seccompDenied = []string{
	"add_key", "keyctl", "request_key",
	"userfaultfd",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"process_vm_readv", "process_vm_writev",
}

// seccompProfile is Docker's default profile for a process with caps in
// its bounding set (an allow-list: everything else is EPERM, or ENOSYS for
// calls newer than the list, clone3 among them, so the C library falls back
// to clone, whose flags it can see; clone may not make namespaces), with
// seccompDenied taken out of it. It is made once per capability set.
func seccompProfile(caps []string) (*specs.LinuxSeccomp, error) {
	key := fmt.Sprint(caps)
	seccompCache.Lock()
	defer seccompCache.Unlock()
	if p, ok := seccompCache.m[key]; ok {
		return p, nil
	}
	p, err := mobyseccomp.GetDefaultProfile(&specs.Spec{
		Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: slices.Clone(caps)}},
	})
	if err != nil {
		return nil, fmt.Errorf("seccomp profile: %w", err)
	}
	kept := p.Syscalls[:0]
	for _, sc := range p.Syscalls {
		if sc.Action == specs.ActAllow {
			sc.Names = slices.DeleteFunc(slices.Clone(sc.Names), func(n string) bool { return slices.Contains(seccompDenied, n) })
			if len(sc.Names) == 0 {
				continue
			}
		}
		kept = append(kept, sc)
	}
	eperm := uint(errnoEPERM)
	p.Syscalls = append(kept, specs.LinuxSyscall{Names: seccompDenied, Action: specs.ActErrno, ErrnoRet: &eperm})
	if seccompCache.m == nil {
		seccompCache.m = map[string]*specs.LinuxSeccomp{}
	}
	seccompCache.m[key] = p
	return p, nil
}

// seccompCache holds the profiles made (there is one capability set per
// kind of process: root's, and a user's bounding set, which is the same).
var seccompCache struct {
	sync.Mutex
	m map[string]*specs.LinuxSeccomp
}
