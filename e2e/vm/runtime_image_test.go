package vm

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// runtimeBinaries are the daemons the agent starts: Debian's, from the
// host. They come to the guest on the arcbox share, where the agent
// looks for its bundled runtime; the libraries they load are the
// image's.
var runtimeBinaries = []string{"containerd", "containerd-shim-runc-v2", "dockerd", "runc"}

// runtimeBinDir is where the daemons are in the arcbox share: the
// agent's default --runtime-bin-dir is /arcbox/runtime/bin.
const runtimeBinDir = "runtime/bin"

// dockerDaemonJSON is dockerd's configuration in the image. The agent
// starts dockerd without --iptables=false and has no setting that passes
// it, and the image has no iptables (nor nf_tables modules), with which
// dockerd 20.10 refuses to start; nor does it need a bridge for
// `docker version`. The file is where an operator would say so too.
const dockerDaemonJSON = `{"iptables": false, "ip6tables": false, "ip-masq": false, "bridge": "none"}
`

// layerFile is a file of the runtime layer: where it goes in the image
// (no leading slash), and either the host file it is copied from or its
// content.
type layerFile struct {
	dst  string
	src  string
	data []byte
	mode uint32
}

// sharedLibs returns the libraries a dynamic executable loads, the dynamic
// loader included, at the paths ldd resolves them to.
func sharedLibs(t *testing.T, ldd, bin string) []string {
	t.Helper()
	out, err := exec.Command(ldd, bin).CombinedOutput()
	text := string(out)
	if err != nil {
		if strings.Contains(text, "not a dynamic executable") {
			return nil
		}
		t.Fatalf("ldd %s: %v\n%s", bin, err, out)
	}
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.Contains(line, "statically linked"), strings.HasPrefix(line, "linux-vdso"):
		case strings.Contains(line, "=> not found"):
			t.Fatalf("ldd %s: a library is missing on the host: %s", bin, line)
		case strings.Contains(line, " => "):
			_, rest, _ := strings.Cut(line, " => ")
			if p, _, _ := strings.Cut(rest, " ("); strings.HasPrefix(p, "/") {
				libs = append(libs, p)
			}
		case strings.HasPrefix(line, "/"):
			p, _, _ := strings.Cut(line, " (")
			libs = append(libs, p)
		}
	}
	return libs
}

// runtimeFiles lists the runtime layer, the system the daemons of the
// arcbox share run on: mkfs.btrfs (the one program the data volume runs),
// every library it and the daemons load, and dockerd's configuration.
func runtimeFiles(t *testing.T) []layerFile {
	t.Helper()
	ldd := testenv.RequireBinary(t, "ldd")
	var files []layerFile
	seen := map[string]bool{}
	addLibs := func(bin string) {
		for _, lib := range sharedLibs(t, ldd, bin) {
			if !seen[lib] {
				seen[lib] = true
				files = append(files, layerFile{dst: strings.TrimPrefix(lib, "/"), src: lib, mode: 0o755})
			}
		}
	}
	for _, b := range runtimeBinaries {
		addLibs(testenv.RequireBinary(t, b))
	}
	mkfs := testenv.RequireBinary(t, "mkfs.btrfs")
	files = append(files, layerFile{dst: "usr/sbin/mkfs.btrfs", src: mkfs, mode: 0o755})
	addLibs(mkfs)
	files = append(files, layerFile{dst: "etc/docker/daemon.json", data: []byte(dockerDaemonJSON), mode: 0o644})
	return files
}

// runtimeLayer returns a newc archive of the runtime layer, which the
// kernel unpacks after the base initramfs it is appended to. It is cached
// under cache, keyed by the layer's layout and each host file's size and
// modification time, so a Debian update rebuilds it.
func runtimeLayer(t *testing.T, cache string) string {
	t.Helper()
	files := runtimeFiles(t)
	h := sha256.New()
	fmt.Fprintln(h, "runtime layer v2")
	for _, f := range files {
		if f.src == "" {
			fmt.Fprintf(h, "%s %o %q\n", f.dst, f.mode, f.data)
			continue
		}
		fi, err := os.Stat(f.src)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s %o %s %d %d\n", f.dst, f.mode, f.src, fi.Size(), fi.ModTime().UnixNano())
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	path := filepath.Join(cache, "runtime-"+key+".cpio")
	if _, err := os.Stat(path); err == nil {
		return path
	}
	stale, _ := filepath.Glob(filepath.Join(cache, "runtime-*.cpio"))
	for _, s := range stale {
		_ = os.Remove(s)
	}

	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(tmp)
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	w := &cpioWriter{w: bw}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	dirs := map[string]bool{}
	for _, f := range files {
		for p := filepath.Dir(f.dst); p != "."; p = filepath.Dir(p) {
			dirs[p] = true
		}
	}
	// Sorted, a parent comes before its children. Directories the base
	// archive made already are left as they are by the kernel.
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		must(w.write(cpioEntry{name: d, mode: sIFDIR | 0o755}))
	}
	for _, f := range files {
		data := f.data
		if f.src != "" {
			data, err = os.ReadFile(f.src)
			must(err)
		}
		must(w.write(cpioEntry{name: f.dst, mode: sIFREG | f.mode, data: data}))
	}
	must(w.close())
	must(bw.Flush())
	must(f.Close())
	must(os.Rename(tmp, path))
	return path
}

// concatFiles writes the files one after the other into dst: newc
// archives so joined are unpacked in turn by the kernel.
func concatFiles(t *testing.T, dst string, srcs ...string) {
	t.Helper()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	for _, s := range srcs {
		in, err := os.Open(s)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(out, in)
		in.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
