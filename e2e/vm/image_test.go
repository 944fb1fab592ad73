package vm

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// modules are what the agent loads as the VM's init; their dependencies
// come along (fuse with virtiofs). A module the kernel has built in is
// left out of the image and the agent skips it.
var modules = []string{"virtio_pci", "virtio_net", "virtio_blk", "vsock_loopback", "btrfs", "overlay", "fuse", "virtiofs"}

// vmImage is a bootable kernel and initramfs whose /init hands PID 1 to
// the agent.
type vmImage struct {
	kernel, initrd, release string
	built                   time.Duration
	// token is the agent's bearer token, in the initramfs at
	// guestTokenFile (0600): the agent serves its TCP listeners with it.
	token string
	// runtimeInitrd is initrd with the runtime layer appended:
	// mkfs.btrfs and the libraries it and the daemons (which come on
	// the arcbox share) load.
	runtimeInitrd string
	runtimeBuilt  time.Duration
}

// repoRoot is the module root, for the cache directory git ignores.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fetchKernel downloads Debian's cloud kernel package (never installs it)
// and unpacks it into the cache, once.
func fetchKernel(t *testing.T, cache string) (vmlinuz, modRoot, release string) {
	t.Helper()
	testenv.RequireBinary(t, "apt-get")
	testenv.RequireBinary(t, "dpkg-deb")
	depmod := testenv.RequireBinary(t, "depmod")
	deps := run(t, cache, "apt-cache", "depends", "linux-image-cloud-amd64")
	var pkg string
	for _, line := range strings.Split(deps, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			pkg = f[1]
		}
	}
	if pkg == "" {
		t.Fatalf("apt-cache knows no linux-image-cloud-amd64 dependency:\n%s", deps)
	}
	release = strings.TrimPrefix(pkg, "linux-image-")
	root := filepath.Join(cache, pkg)
	vmlinuz = filepath.Join(root, "boot", "vmlinuz-"+release)
	modRoot = filepath.Join(root, "lib", "modules", release)
	if _, err := os.Stat(filepath.Join(modRoot, "modules.dep")); err == nil {
		return vmlinuz, modRoot, release
	}
	dl := filepath.Join(cache, "download")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", "-c", "cd "+dl+" && apt-get download "+pkg).CombinedOutput(); err != nil {
		// The package lists may be older than the mirror: refresh once.
		run(t, dl, "apt-get", "update", "-qq")
		if out2, err := exec.Command("sh", "-c", "cd "+dl+" && apt-get download "+pkg).CombinedOutput(); err != nil {
			t.Fatalf("apt-get download %s: %v\n%s\n%s", pkg, err, out, out2)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
	if len(debs) == 0 {
		t.Fatalf("no %s package downloaded", pkg)
	}
	tmp := root + ".tmp"
	_ = os.RemoveAll(tmp)
	run(t, cache, "dpkg-deb", "-x", debs[0], tmp)
	run(t, cache, depmod, "-b", tmp, release)
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(dl)
	return vmlinuz, modRoot, release
}

// moduleFiles returns the module files for names and all they depend on,
// relative to the module tree; names the kernel has built in need none.
func moduleFiles(t *testing.T, modRoot string, names []string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(modRoot, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modRoot, "modules.builtin")); err == nil {
		for _, line := range strings.Fields(string(b)) {
			builtin[moduleName(line)] = true
		}
	}
	deps := map[string][]string{}
	byName := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		mod, rest, _ := strings.Cut(sc.Text(), ":")
		deps[mod] = strings.Fields(rest)
		byName[moduleName(mod)] = mod
	}
	seen := map[string]bool{}
	var walk func(string)
	walk = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, d := range deps[p] {
			walk(d)
		}
	}
	for _, n := range names {
		p, ok := byName[n]
		if !ok && builtin[n] {
			continue
		}
		if !ok {
			t.Fatalf("module %s is not in this kernel", n)
		}
		walk(p)
	}
	var out []string
	for p := range seen {
		out = append(out, p)
	}
	return out
}

// moduleName is a module's name from its path in modules.dep or
// modules.builtin: kernel/fs/fuse/virtiofs.ko is virtiofs.
func moduleName(path string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(path), ".ko"), "-", "_")
}

const initScript = `#!/bin/busybox sh
# The e2e image's init: start the in-guest checks in the background, then
# hand PID 1 to the agent, which loads its own modules and configures eth0
# from the kernel command line.
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox sh /e2e-guest.sh </dev/console >/dev/console 2>&1 &
exec /sbin/arcbox-agent
`

// guestScript reports to the host, on the serial console, what only the
// guest can see, and takes the host's orders from it, one a line:
// "write PATH TOKEN" (then sync), "check PATH" (answers its content),
// "mounts" (the btrfs, ext4 and virtiofs mounts), "stat PATH" (the
// filesystem type in hex, as statfs(2) has it, and the inode number: 256
// is a btrfs subvolume's root), "shutdown" (SIGTERM to PID 1).
const guestScript = `#!/bin/busybox sh
export PATH=/bin:/sbin
echo "E2E-GUEST: started"
if /sbin/arcbox-agent probe -timeout 60s vsock://1:1024 /v1/ping; then
	echo "E2E-VSOCK: ok"
else
	echo "E2E-VSOCK: refused"
fi
while read -r cmd path token; do
	case "$cmd" in
	shutdown) echo "E2E-GUEST: SIGTERM to PID 1"; kill -TERM 1 ;;
	write) echo "$token" > "$path" && sync && echo "E2E-WROTE: $path" ;;
	check) if [ -f "$path" ]; then echo "E2E-FOUND: $path $(cat "$path")"; else echo "E2E-MISSING: $path"; fi ;;
	mounts)
		while read -r dev dir fs opts rest; do
			case "$fs" in btrfs|ext4|virtiofs) echo "E2E-MOUNT: $dev $dir $fs $opts" ;; esac
		done < /proc/mounts
		echo "E2E-MOUNTS: end" ;;
	stat) echo "E2E-STAT: $path $(stat -f -c %t "$path") $(stat -c %i "$path")" ;;
	esac
done
echo "E2E-GUEST: the console closed"
`

// guestTokenFile is where the initramfs holds the agent's token, given
// to it as ARCBOX_AUTH_TOKEN_FILE. Relative: the archive's names are.
const guestTokenFile = "etc/arcbox/token"

// newToken makes a bearer token: 32 random bytes, hex.
func newToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// buildImage builds the initramfs around the agent (agenttest's static
// binary) and fetches the kernel, which is cached under .cache/vm.
func buildImage(t *testing.T) vmImage {
	t.Helper()
	began := time.Now()
	root := repoRoot(t)
	cache := filepath.Join(root, ".cache", "vm")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	vmlinuz, modRoot, release := fetchKernel(t, cache)
	busybox := "/bin/busybox"
	testenv.RequireFile(t, busybox)

	agent := agenttest.Binary(t)

	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	f, err := os.Create(initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	w := &cpioWriter{w: bw}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	file := func(name, src string, mode uint32) {
		data, err := os.ReadFile(src)
		must(err)
		must(w.write(cpioEntry{name: name, mode: sIFREG | mode, data: data}))
	}
	mods := moduleFiles(t, modRoot, modules)
	dirs := map[string]bool{}
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", filepath.Dir(guestTokenFile), "var/lib", "var/log"} {
		dirs[d] = true
	}
	for _, m := range mods {
		dirs[filepath.Dir("lib/modules/"+release+"/"+m)] = true
	}
	for d := range dirs { // and every parent
		for p := filepath.Dir(d); p != "."; p = filepath.Dir(p) {
			dirs[p] = true
		}
	}
	// Sorted, a parent comes before its children.
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		must(w.write(cpioEntry{name: d, mode: sIFDIR | 0o755}))
	}
	must(w.write(cpioEntry{name: "dev/console", mode: sIFCHR | 0o600, rdevMajor: 5, rdevMinor: 1}))
	must(w.write(cpioEntry{name: "dev/null", mode: sIFCHR | 0o666, rdevMajor: 1, rdevMinor: 3}))
	file("bin/busybox", busybox, 0o755)
	for _, applet := range []string{"sh", "mount", "kill", "sync", "cat", "echo", "ls", "mkdir", "sleep", "stat"} {
		must(w.write(cpioEntry{name: "bin/" + applet, mode: sIFLNK | 0o777, linkTarget: "busybox"}))
	}
	file("sbin/arcbox-agent", agent, 0o755)
	token := newToken(t)
	must(w.write(cpioEntry{name: guestTokenFile, mode: sIFREG | 0o600, data: []byte(token + "\n")}))
	must(w.write(cpioEntry{name: "init", mode: sIFREG | 0o755, data: []byte(initScript)}))
	must(w.write(cpioEntry{name: "e2e-guest.sh", mode: sIFREG | 0o755, data: []byte(guestScript)}))
	for _, meta := range []string{"modules.dep", "modules.builtin", "modules.order", "modules.alias"} {
		if _, err := os.Stat(filepath.Join(modRoot, meta)); err == nil {
			file("lib/modules/"+release+"/"+meta, filepath.Join(modRoot, meta), 0o644)
		}
	}
	for _, m := range mods {
		file("lib/modules/"+release+"/"+m, filepath.Join(modRoot, m), 0o644)
	}
	must(w.close())
	must(bw.Flush())
	return vmImage{kernel: vmlinuz, initrd: initrd, release: release, built: time.Since(began), token: token}
}

// addRuntime makes im.runtimeInitrd: the base initramfs with the runtime
// layer (cached under .cache/vm) appended.
func (im *vmImage) addRuntime(t *testing.T) {
	t.Helper()
	began := time.Now()
	layer := runtimeLayer(t, filepath.Join(repoRoot(t), ".cache", "vm"))
	im.runtimeInitrd = filepath.Join(filepath.Dir(im.initrd), "initrd-runtime.cpio")
	concatFiles(t, im.runtimeInitrd, im.initrd, layer)
	im.runtimeBuilt = time.Since(began)
}

func (im vmImage) String() string { return fmt.Sprintf("kernel %s, initrd %s", im.release, im.initrd) }
