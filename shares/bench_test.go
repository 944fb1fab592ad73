package shares

import (
	"bytes"
	"testing"
)

func BenchmarkParse(b *testing.B) {
	s := Format(Defaults()) + ",data=/mnt/data:ro,noatime,dax=inode,cache=/var/cache/host:nodiratime"
	for b.Loop() {
		if _, err := Parse(s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMountAll is the package's own work for the default shares,
// with the system calls faked: what the agent's startup pays on top of
// the kernel's mounts.
func BenchmarkMountAll(b *testing.B) {
	for b.Loop() {
		k := newFakeKernel(true, map[string]bool{"arcbox": true, "users": false, "private": false})
		for i := range 30 {
			k.premountForeign("/sys/fs/x"+string(rune('a'+i)), "/", "tmpfs", "tmpfs")
		}
		if got := k.mounter(&bytes.Buffer{}).MountAll(Defaults()); len(got) != 3 {
			b.Fatalf("mounted %d", len(got))
		}
	}
}

// BenchmarkReadMountInfo reads this machine's mount table, which MountAll
// reads twice a share.
func BenchmarkReadMountInfo(b *testing.B) {
	for b.Loop() {
		if _, err := readMountInfo("/proc/self/mountinfo"); err != nil {
			b.Fatal(err)
		}
	}
}
