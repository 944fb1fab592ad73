package disk

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// makeFiles writes n small files under dir, a hundred per subdirectory.
func makeFiles(b *testing.B, dir string, n int) {
	b.Helper()
	content := make([]byte, 1024)
	for i := range n {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", i/100))
		if i%100 == 0 {
			if err := os.Mkdir(sub, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d", i%100)), content, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshot compares a btrfs snapshot with the copy fallback (on
// ext4) for trees of 100 and 10,000 files of 1 KiB. Only Snapshot is
// timed; each snapshot is deleted untimed before the next.
func BenchmarkSnapshot(b *testing.B) {
	requireMountTests(b)
	backends := []struct{ name, dir string }{
		{"btrfs", newBtrfsDir(b)},
		{"copy-ext4", newExt4Dir(b)},
	}
	for _, be := range backends {
		s, err := NewSnapshotter(be.dir)
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range []int{100, 10_000} {
			src := filepath.Join(be.dir, fmt.Sprintf("src-%d", n))
			if err := s.Create(src); err != nil {
				b.Fatal(err)
			}
			makeFiles(b, src, n)
			unix.Sync()
			b.Run(fmt.Sprintf("%s/files=%d", be.name, n), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					dst := filepath.Join(be.dir, fmt.Sprintf("snap-%d-%d", n, i))
					if err := s.Snapshot(src, dst, false); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if err := s.Delete(dst); err != nil {
						b.Fatal(err)
					}
					unix.Sync()
					b.StartTimer()
				}
			})
		}
	}
}
