// Package oci is the sandbox backend of the agent: it runs each sandbox as
// an OCI container through runc or crun (go-runc), for a sandbox.Manager,
// which keeps the states, records, addresses and events.
//
// Its files by job: backend_linux.go (New, Validate, Close), runtime_linux.go
// (finding and running the OCI runtime, the descriptors it inherits),
// bundle_linux.go (Start: the layers, mounts, network and config.json of a
// bundle), container_linux.go (Adopt, KillWorkloads, Stop, Destroy),
// checkpoint_linux.go, process_linux.go and viainit_linux.go (processes,
// started by the sandbox's init or the runtime), ocispec.go and
// seccomp_linux.go (the spec), mountpolicy_linux.go, inroot_linux.go and
// userns_linux.go (what a sandbox may mount, and how), image.go and
// extract_linux.go (images), imageconfig_linux.go (the image config kept
// beside a sandbox's files), user.go (users inside a sandbox),
// cgroup_linux.go, nice_linux.go and pidfd_linux.go (the processes on the
// host), files_linux.go and files_archive_linux.go (OpenFiles: a sandbox's
// files, every path resolved with openat2(RESOLVE_IN_ROOT), and tar
// streams in and out), stats_linux.go and cgroupstats.go (Stats: a
// sandbox's cgroup, v2 or v1, read and parsed). config.go is the Config
// and DefaultCgroupParent, each agent's own parent of its sandboxes'
// cgroups.
package oci
