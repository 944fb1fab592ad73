package kmod

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func tree(t *testing.T, dep, builtin string, loaded ...string) Loader {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644))
	must(os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644))
	sys := filepath.Join(dir, "sys")
	for _, m := range loaded {
		must(os.MkdirAll(filepath.Join(sys, m), 0o755))
	}
	return Loader{Dir: dir, SysModule: sys}
}

const dep = `kernel/fs/btrfs/btrfs.ko: kernel/crypto/xor.ko kernel/lib/raid6/raid6_pq.ko kernel/lib/libcrc32c.ko
kernel/crypto/xor.ko:
kernel/lib/raid6/raid6_pq.ko:
kernel/lib/libcrc32c.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/net/vmw_vsock/vsock-loopback.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
`

func TestLoadOrdersDependenciesFirstAndOnce(t *testing.T) {
	l := tree(t, dep, "kernel/fs/ext4/ext4.ko\n", "virtio_ring")
	var got []string
	l.Insert = func(path string) error {
		got = append(got, strings.TrimPrefix(path, l.Dir+"/"))
		return nil
	}
	inserted, err := l.Load("virtio_pci", "virtio_net", "btrfs", "vsock_loopback", "ext4")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_pci.ko",
		"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
		"kernel/crypto/xor.ko", "kernel/lib/raid6/raid6_pq.ko", "kernel/lib/libcrc32c.ko", "kernel/fs/btrfs/btrfs.ko",
		"kernel/net/vmw_vsock/vsock.ko", "kernel/net/vmw_vsock/vsock-loopback.ko",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("inserted files\n got %v\nwant %v", got, want)
	}
	if len(inserted) != len(want) || inserted[len(inserted)-1] != "vsock_loopback" {
		t.Errorf("inserted names %v", inserted)
	}
}

func TestLoadNamesWhatIsMissingAndWhatFailed(t *testing.T) {
	l := tree(t, dep, "")
	l.Insert = func(path string) error {
		if strings.HasSuffix(path, "xor.ko") {
			return os.ErrPermission
		}
		return nil
	}
	_, err := l.Load("nosuchmod", "btrfs")
	if err == nil || !strings.Contains(err.Error(), "module nosuchmod: not in") || !strings.Contains(err.Error(), "load module xor") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadWithoutDepmod(t *testing.T) {
	_, err := Loader{Dir: t.TempDir()}.Load("btrfs")
	if err == nil || !strings.Contains(err.Error(), "run depmod") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadNamesABadModulesDep(t *testing.T) {
	l := tree(t, "kernel/"+strings.Repeat("m", 1<<20)+".ko:\n", "")
	_, err := l.Load("m")
	if err == nil || !strings.Contains(err.Error(), filepath.Join(l.Dir, "modules.dep")) {
		t.Fatalf("a line past the scanner's limit: err = %v, want one naming modules.dep", err)
	}
}

func TestLoadRefusesWhatIsNotAModuleName(t *testing.T) {
	l := tree(t, dep, "", "btrfs")
	l.Insert = func(path string) error { t.Errorf("inserted %s", path); return nil }
	for _, n := range []string{".", "..", "../module", "fs/btrfs"} {
		if _, err := l.Load(n); err == nil || !strings.Contains(err.Error(), "not a module name") {
			t.Errorf("Load(%q) = %v, want not a module name", n, err)
		}
	}
}
