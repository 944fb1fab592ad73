package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox"
	"golang.org/x/sys/unix"
)

// filesEnv is a ready sandbox with a bind mount, for the files API tests.
type filesEnv struct {
	*ociEnv
	id      string
	rootfs  string // its merged root on the host
	hostDir string // a host directory no path may reach
}

func newFilesEnv(t testing.TB, rt string) *filesEnv {
	e := newOCIEnv(t, rt)
	data := e.sharedDir("data")
	must(t, os.WriteFile(filepath.Join(data, "x"), []byte("HOST DATA"), 0o644))
	hostDir := e.sharedDir("hostside")
	must(t, os.WriteFile(filepath.Join(hostDir, "f"), []byte("HOST"), 0o644))
	info := e.create(sandbox.Spec{ID: "files-" + rt, Mounts: []sandbox.Mount{{Source: data, Target: "/data"}}})
	return &filesEnv{ociEnv: e, id: info.ID, rootfs: filepath.Join(e.cfg.StateDir, "sandboxes", info.ID, "rootfs"), hostDir: hostDir}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (e *filesEnv) tree(write bool) sandbox.FileTree {
	e.t.Helper()
	tree, err := e.m.Files(e.id, write)
	if err != nil {
		e.t.Fatalf("Files: %v", err)
	}
	e.t.Cleanup(func() { tree.Close() })
	return tree
}

// read reads a whole file through the files API.
func read(tree sandbox.FileTree, p string) (string, error) {
	f, _, err := tree.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

// wantRefused checks that err is a 4xx class naming the path.
func wantRefused(t *testing.T, what string, err error, class error) {
	t.Helper()
	if !errors.Is(err, class) || !strings.Contains(err.Error(), `"path"`) {
		t.Errorf("%s: %v, want %v naming the path", what, err, class)
	}
}

// TestFilesEscape is the path-escape suite: symlinks to /, up and
// absolute, a symlink swapped while reads run, a bind-mounted path, a
// FIFO, a device node. Nothing outside the sandbox's root is reached;
// what cannot be served is a 4xx naming the path.
func TestFilesEscape(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			e := newFilesEnv(t, rt)
			e.sh(e.id, "echo inside > /marker && ln -s / /rootlink && ln -s ../../../../../.. /uplink && "+
				"ln -s /etc /abslink && ln -s "+e.hostDir+" /hostlink && ln -s /data /datalink && mkfifo /fifo && "+
				"mkdir -p /swap/real && echo swapped-inside > /swap/real/f")
			// A device node, as an image could carry one (the sandbox
			// cannot make one).
			must(t, unix.Mknod(filepath.Join(e.rootfs, "nulldev"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
			passwd := e.sh(e.id, "cat /etc/passwd")
			tree := e.tree(true)

			for p, want := range map[string]string{"/rootlink/marker": "inside\n", "/uplink/marker": "inside\n", "/abslink/passwd": passwd,
				"/rootlink/rootlink/uplink/abslink/passwd": passwd} {
				if got, err := read(tree, p); err != nil || got != want {
					t.Errorf("read %s = %q, %v; want the sandbox's %q", p, got, err, want)
				}
			}
			_, err := read(tree, "/hostlink/f")
			wantRefused(t, "a symlink to a host path", err, sandbox.ErrNotFound)
			_, err = read(tree, "/uplink"+e.hostDir+"/f")
			wantRefused(t, "up and into a host path", err, sandbox.ErrNotFound)
			_, err = read(tree, "/../../marker")
			wantRefused(t, "..", err, sandbox.ErrInvalid)
			for _, p := range []string{"/data/x", "/datalink/x", "/data", "/proc/self/environ", "/dev/null"} {
				_, err = read(tree, p)
				wantRefused(t, "under a mount: "+p, err, sandbox.ErrInvalid)
				if err != nil && strings.HasPrefix(p, "/data") && !strings.Contains(err.Error(), "/data") {
					t.Errorf("%s: %v does not name the mount", p, err)
				}
			}
			_, _, err = tree.Write(context.Background(), "/datalink/y", strings.NewReader("z"), sandbox.WriteOptions{Limit: 10})
			wantRefused(t, "a write through a symlink to a bind mount", err, sandbox.ErrInvalid)
			wantRefused(t, "remove a bind mount", tree.Remove("/data", true), sandbox.ErrInvalid)
			for _, p := range []string{"/fifo", "/nulldev"} {
				_, err = read(tree, p)
				wantRefused(t, "read "+p, err, sandbox.ErrInvalid)
				_, _, err = tree.Write(context.Background(), p, strings.NewReader("z"), sandbox.WriteOptions{Limit: 10})
				wantRefused(t, "write "+p, err, sandbox.ErrInvalid)
			}
			// Writes through the symlinks land in the sandbox's root.
			if _, _, err := tree.Write(context.Background(), "/rootlink/written", strings.NewReader("w"), sandbox.WriteOptions{Limit: 10}); err != nil {
				t.Errorf("write through /rootlink: %v", err)
			}
			if got := e.sh(e.id, "cat /written"); got != "w" {
				t.Errorf("/written in the sandbox = %q", got)
			}
			_, _, err = tree.Write(context.Background(), "/hostlink/g", strings.NewReader("w"), sandbox.WriteOptions{Limit: 10})
			wantRefused(t, "write through a symlink to a host path", err, sandbox.ErrNotFound)
			if _, err := os.Stat(filepath.Join(e.hostDir, "g")); !os.IsNotExist(err) {
				t.Errorf("the host directory got a file: %v", err)
			}

			// A symlink swapped between a directory of the sandbox and
			// the host's path while reads run: each read gets the
			// sandbox's file or not-found, never the host's.
			cur := filepath.Join(e.rootfs, "swap", "cur")
			tmpLink := filepath.Join(e.rootfs, "swap", "next")
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var flips atomic.Int64
			wg.Add(1)
			go func() {
				defer wg.Done()
				targets := []string{"real", "../../../../../../../.." + e.hostDir, e.hostDir}
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					os.Remove(tmpLink)
					if err := os.Symlink(targets[i%len(targets)], tmpLink); err == nil && os.Rename(tmpLink, cur) == nil {
						flips.Add(1)
					}
				}
			}()
			var inside int
			for range 2000 {
				got, err := read(tree, "/swap/cur/f")
				switch {
				case err == nil && got == "swapped-inside\n":
					inside++
				case err == nil:
					t.Fatalf("read /swap/cur/f during swaps = %q: outside the sandbox", got)
				case !errors.Is(err, sandbox.ErrNotFound):
					t.Errorf("read during swaps: %v", err)
				}
			}
			close(stop)
			wg.Wait()
			t.Logf("%d reads of the sandbox's file among 2000, %d swaps", inside, flips.Load())
		})
	}
}

// TestFilesMkdirSwap: the sandbox swaps each directory the files API
// makes for a symlink to a host file while mkdirs run; the agent never
// sets the mode of what the symlink leads to on the host.
func TestFilesMkdirSwap(t *testing.T) {
	e := newFilesEnv(t, "crun")
	e.sh(e.id, "mkdir /race")
	secret := filepath.Join(e.hostDir, "secret")
	must(t, os.WriteFile(secret, []byte("HOST SECRET"), 0o600))
	tree := e.tree(true)
	d, aside := filepath.Join(e.rootfs, "race", "d"), filepath.Join(e.rootfs, "race", "aside")

	// The sandbox's side (from the host, as it could from inside): as
	// soon as d is a directory, move it aside and put a symlink there.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var swaps atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			os.Remove(aside)
			if os.Rename(d, aside) == nil && os.Symlink(secret, d) == nil {
				swaps.Add(1)
			}
		}
	}()
	mode := uint32(0o777)
	var made, replaced int
	for range 3000 {
		os.Remove(d)
		_, _, err := tree.Mkdir("/race/d", sandbox.MkdirOptions{Mode: &mode})
		switch {
		case err == nil:
			made++
		case strings.Contains(err.Error(), "replaced"):
			replaced++
		case !errors.Is(err, sandbox.ErrConflict) && !errors.Is(err, sandbox.ErrNotFound) && !errors.Is(err, sandbox.ErrInvalid):
			t.Errorf("mkdir during swaps: %v", err)
		}
		if st, err := os.Stat(secret); err != nil || st.Mode().Perm() != 0o600 {
			close(stop)
			wg.Wait()
			t.Fatalf("the host file after a mkdir during swaps: %v, %v; want mode 0600", st.Mode(), err)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("3000 mkdirs: %d made, %d refused as replaced, %d swaps", made, replaced, swaps.Load())
}

// TestFilesOps: writes (mode, owner, ETag, If-Match, If-None-Match, the
// limit), stat, list, mkdir and remove, seen from inside the sandbox.
func TestFilesOps(t *testing.T) {
	e := newFilesEnv(t, "crun")
	tree := e.tree(true)
	ctx := context.Background()
	fi, created, err := tree.Write(ctx, "/f", strings.NewReader("one"), sandbox.WriteOptions{Limit: 100})
	if err != nil || !created || fi.Size != 3 || fi.Mode != 0o644 || fi.UID != 0 || fi.ETag == "" {
		t.Fatalf("Write new = %+v, %v, %v", fi, created, err)
	}
	uid, mode := uint32(1000), uint32(0o600)
	fi2, created, err := tree.Write(ctx, "/f", strings.NewReader("two!"), sandbox.WriteOptions{Limit: 100, IfMatch: fi.ETag, UID: &uid, Mode: &mode})
	if err != nil || created || fi2.ETag == fi.ETag {
		t.Fatalf("Write If-Match = %+v, %v, %v; want replaced with a new tag", fi2, created, err)
	}
	if got := e.sh(e.id, "stat -c '%u:%g %a' /f; cat /f"); got != "1000:0 600\ntwo!" {
		t.Errorf("in the sandbox: %q", got)
	}
	if _, _, err := tree.Write(ctx, "/f", strings.NewReader("x"), sandbox.WriteOptions{Limit: 100, IfMatch: fi.ETag}); !errors.Is(err, sandbox.ErrPrecondition) {
		t.Errorf("If-Match with the old tag: %v, want ErrPrecondition", err)
	}
	if _, _, err := tree.Write(ctx, "/f", strings.NewReader("x"), sandbox.WriteOptions{Limit: 100, CreateOnly: true}); !errors.Is(err, sandbox.ErrPrecondition) {
		t.Errorf("If-None-Match: * over a file: %v, want ErrPrecondition", err)
	}
	// A replacement keeps the owner and mode it is not told.
	if _, _, err := tree.Write(ctx, "/f", strings.NewReader("three"), sandbox.WriteOptions{Limit: 100}); err != nil {
		t.Fatal(err)
	}
	if got := e.sh(e.id, "stat -c '%u %a' /f"); got != "1000 600\n" {
		t.Errorf("after a plain replace: %q", got)
	}
	_, _, err = tree.Write(ctx, "/big", strings.NewReader(strings.Repeat("x", 101)), sandbox.WriteOptions{Limit: 100})
	if !errors.Is(err, sandbox.ErrTooLarge) {
		t.Errorf("over the limit: %v, want ErrTooLarge", err)
	}
	big := uint32(70000)
	if _, _, err := tree.Write(ctx, "/g", strings.NewReader("x"), sandbox.WriteOptions{Limit: 100, UID: &big}); !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), `"uid"`) {
		t.Errorf("uid outside the range: %v", err)
	}
	if got := e.sh(e.id, "ls -a / | grep -c arcbox-tmp || true"); got != "0\n" {
		t.Errorf("temporary files left: %q", got)
	}

	if _, _, err := tree.Mkdir("/a/b/c", sandbox.MkdirOptions{}); !errors.Is(err, sandbox.ErrNotFound) {
		t.Errorf("mkdir without parents: %v, want ErrNotFound", err)
	}
	if fi, created, err := tree.Mkdir("/a/b/c", sandbox.MkdirOptions{Parents: true, UID: &uid}); err != nil || !created || fi.Type != sandbox.FileDir || fi.UID != 1000 {
		t.Errorf("mkdir -p = %+v, %v, %v", fi, created, err)
	}
	if _, created, err := tree.Mkdir("/a/b/c", sandbox.MkdirOptions{Parents: true}); err != nil || created {
		t.Errorf("mkdir -p of an existing dir = %v, %v", created, err)
	}
	if _, _, err := tree.Mkdir("/a", sandbox.MkdirOptions{}); !errors.Is(err, sandbox.ErrConflict) {
		t.Errorf("mkdir of an existing dir: %v, want ErrConflict", err)
	}
	if got := e.sh(e.id, "stat -c '%u %a' /a /a/b/c"); got != "1000 755\n1000 755\n" {
		t.Errorf("made dirs in the sandbox: %q", got)
	}
	e.sh(e.id, "ln -s /a /a/b/loop && touch /a/b/c/file")
	entries, truncated, err := tree.List("/a", 3, 100)
	var paths []string
	for _, fi := range entries {
		paths = append(paths, fi.Path+":"+string(fi.Type))
	}
	if want := "/a/b:dir /a/b/c:dir /a/b/c/file:file /a/b/loop:symlink"; err != nil || truncated || strings.Join(paths, " ") != want {
		t.Errorf("List = %v, %v, %v; want %s", paths, truncated, err, want)
	}
	if _, truncated, _ := tree.List("/a", 3, 2); !truncated {
		t.Error("List past its max: not truncated")
	}
	if entries, _, err := tree.List("/", 1, 1000); err != nil || len(entries) < 5 {
		t.Errorf("List / = %d entries, %v", len(entries), err)
	}
	if fi, err := tree.Stat("/a/b/loop"); err != nil || fi.Type != sandbox.FileSymlink || fi.LinkTarget != "/a" {
		t.Errorf("Stat of a symlink = %+v, %v", fi, err)
	}
	if fi, err := tree.Stat("/"); err != nil || fi.Type != sandbox.FileDir {
		t.Errorf("Stat / = %+v, %v", fi, err)
	}
	if err := tree.Remove("/a", false); !errors.Is(err, sandbox.ErrConflict) {
		t.Errorf("remove a full dir: %v, want ErrConflict", err)
	}
	if err := tree.Remove("/a", true); err != nil {
		t.Errorf("remove -r: %v", err)
	}
	wantRefused(t, "remove /", tree.Remove("/", true), sandbox.ErrInvalid)
	if err := tree.Remove("/a", true); !errors.Is(err, sandbox.ErrNotFound) {
		t.Errorf("remove again: %v, want ErrNotFound", err)
	}
	// A state dir reached through a symlink: the root's path compares
	// with the kernel's paths of what is opened in it.
	link := filepath.Join(t.TempDir(), "state")
	must(t, os.Symlink(e.cfg.StateDir, link))
	linked, err := (&Backend{boxesDir: filepath.Join(link, "sandboxes"), log: testLogger()}).OpenFiles(e.id, sandbox.FilesRequest{})
	if err != nil {
		t.Fatalf("OpenFiles through a symlinked state dir: %v", err)
	}
	if fi, err := linked.Stat("/f"); err != nil || fi.Size != 5 {
		t.Errorf("Stat through a symlinked state dir = %+v, %v", fi, err)
	}
	linked.Close()
	// A read-only tree refuses writes.
	ro := e.tree(false)
	if _, _, err := ro.Write(ctx, "/f", strings.NewReader("x"), sandbox.WriteOptions{Limit: 100}); !errors.Is(err, sandbox.ErrConflict) {
		t.Errorf("write through a read-only tree: %v", err)
	}
}

// TestFilesArchive: a tree with symlinks, hard links, modes, owners and
// names over 100 bytes goes out and back in the same; an archive with a
// ".." entry, an absolute name or a hard link out is refused and leaves
// nothing.
func TestFilesArchive(t *testing.T) {
	e := newFilesEnv(t, "runc")
	long := strings.Repeat("d", 60) + "/" + strings.Repeat("n", 120)
	e.sh(e.id, "mkdir -p /src/"+long+" /dst /bad && cd /src && echo hi > a && chmod 4750 a && chown 1000:2000 a && "+
		"ln a hard && ln -s a rel && ln -s /etc/passwd abs && echo long > "+long+"/f && mkfifo pipe && mkdir -m 700 private")
	tree := e.tree(true)
	var buf bytes.Buffer
	if err := tree.WriteArchive(&buf, "/src"); err != nil {
		t.Fatalf("WriteArchive: %v", err)
	}
	if err := tree.ExtractArchive("/dst", bytes.NewReader(buf.Bytes()), 1<<20); err != nil {
		t.Fatalf("ExtractArchive: %v", err)
	}
	list := "find . | sort | while read f; do stat -c '%n %a %u:%g %F %s' \"$f\"; [ -L \"$f\" ] && readlink \"$f\"; done; md5sum a " + long + "/f"
	src, dst := e.sh(e.id, "cd /src && "+list), e.sh(e.id, "cd /dst && "+list)
	if src != dst {
		t.Errorf("round trip differs:\nsrc:\n%s\ndst:\n%s", src, dst)
	}
	if got := e.sh(e.id, "stat -c %i /dst/a /dst/hard | uniq | wc -l"); got != "1\n" {
		t.Errorf("the hard link is no hard link in /dst")
	}
	// Extracting again merges: files are replaced, directories stay.
	if err := tree.ExtractArchive("/dst", bytes.NewReader(buf.Bytes()), 1<<20); err != nil {
		t.Errorf("ExtractArchive again: %v", err)
	}
	if err := tree.ExtractArchive("/dst", bytes.NewReader(buf.Bytes()), 100); !errors.Is(err, sandbox.ErrTooLarge) {
		t.Errorf("over the limit: %v, want ErrTooLarge", err)
	}

	for name, entries := range map[string][]tar.Header{
		"dotdot":   {{Name: "ok", Typeflag: tar.TypeReg}, {Name: "../evil", Typeflag: tar.TypeReg}},
		"absolute": {{Name: "ok", Typeflag: tar.TypeReg}, {Name: "/evil", Typeflag: tar.TypeReg}},
		"hardlink": {{Name: "ok", Typeflag: tar.TypeReg}, {Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}},
		"symlink":  {{Name: "ok", Typeflag: tar.TypeReg}, {Name: "s", Typeflag: tar.TypeSymlink, Linkname: "../../x"}},
		"through":  {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/"}, {Name: "l/evil", Typeflag: tar.TypeReg}},
		"device":   {{Name: "ok", Typeflag: tar.TypeReg}, {Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
		"owner":    {{Name: "ok", Typeflag: tar.TypeReg, Uid: 70000}},
	} {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range entries {
			h.Mode = 0o644
			must(t, tw.WriteHeader(&h))
		}
		must(t, tw.Close())
		err := tree.ExtractArchive("/bad", &b, 1<<20)
		if !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), "archive entry") {
			t.Errorf("%s: %v, want a 400 naming the entry", name, err)
		}
	}
	// A sparse entry: a few bytes of archive that would write more than
	// the limit.
	err := tree.ExtractArchive("/bad", bytes.NewReader(sparseArchive(t, 4<<20)), 1<<20)
	if !errors.Is(err, sandbox.ErrTooLarge) {
		t.Errorf("a sparse entry over the limit: %v, want ErrTooLarge", err)
	}
	if got := e.sh(e.id, "ls -A /bad; ls / | grep -c evil || true"); got != "0\n" {
		t.Errorf("a refused archive left: %q", got)
	}

	// An extraction's temporary directory swapped for the sandbox's own:
	// the cleanup leaves the sandbox's.
	ft, err := (&Backend{boxesDir: filepath.Dir(filepath.Dir(e.rootfs)), log: testLogger()}).OpenFiles(e.id, sandbox.FilesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer ft.Close()
	dir, err := os.Open(filepath.Join(e.rootfs, "bad"))
	must(t, err)
	defer dir.Close()
	tmpPath := filepath.Join(e.rootfs, "bad", "tmp")
	must(t, os.MkdirAll(filepath.Join(tmpPath, "sub"), 0o700))
	tmp, err := os.Open(tmpPath)
	must(t, err)
	must(t, os.Rename(tmpPath, filepath.Join(e.rootfs, "bad", "moved")))
	must(t, os.MkdirAll(filepath.Join(tmpPath, "theirs"), 0o755))
	ft.(*fileTree).removeTemp(dir, tmp, "tmp", "/bad/tmp")
	if got := e.sh(e.id, "cd /bad && find . | sort"); got != ".\n./moved\n./tmp\n./tmp/theirs\n" {
		t.Errorf("after the cleanup of a swapped temporary directory: %q; want the sandbox's kept, the agent's emptied", got)
	}
}

// sparseArchive is a tar stream of one PAX sparse file (GNU format 0.1)
// of size bytes, one of data: tar.Writer writes no sparse files, so
// its records are written under another name, renamed in the stream.
func sparseArchive(t *testing.T, size int64) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	must(t, tw.WriteHeader(&tar.Header{Name: "sparse", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"XXX.sparse.size": strconv.FormatInt(size, 10), "XXX.sparse.map": "0,1", "XXX.sparse.numblocks": "1"}}))
	_, err := tw.Write([]byte("x"))
	must(t, err)
	must(t, tw.Close())
	out := bytes.ReplaceAll(b.Bytes(), []byte("XXX.sparse."), []byte("GNU.sparse."))
	// As the extraction reads it: a regular file of size bytes.
	hdr, err := tar.NewReader(bytes.NewReader(out)).Next()
	if err != nil || hdr.Typeflag != tar.TypeReg || hdr.Size != size {
		t.Fatalf("the sparse archive reads as %+v, %v", hdr, err)
	}
	return out
}
