package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

// virtiofsdPath is QEMU's own VirtioFS daemon, the C one Debian's
// qemu-system-common ships (QEMU 7.2); it serves one host directory to
// one vhost-user-fs device.
const virtiofsdPath = "/usr/lib/qemu/virtiofsd"

// share is a host directory the VM sees as a VirtioFS device with a tag.
type share struct {
	tag, dir string
	// cache is virtiofsd's cache mode: "always" keeps the guest's page
	// cache of a file across opens, for files the host does not change
	// while the VM runs; "auto" drops it at each open.
	cache string
}

// The tags the agent mounts by default, and where.
const (
	arcboxTag   = "arcbox" // the runtime's binaries and the daemons' logs
	arcboxMount = "/arcbox"
	usersTag    = "users" // the user's files
	usersMount  = "/Users"
	privateTag  = "private" // the boots here have none
)

// shareDirs are the host directories a boot serves: the arcbox share,
// with the runtime's binaries, and the users share, with a file the host
// wrote for a container to read. No private share: a tag the VM lacks is
// not a failure.
type shareDirs struct {
	arcbox, users string
	// userDir is the directory under the users share holding helloFile,
	// whose content is hello.
	userDir, hello string
}

// helloFile is the file the host writes under the users share.
const helloFile = "hello.txt"

// newShareDirs makes the host's side of the shares: the arcbox share
// holding runtimeBinaries at runtime/bin, and the users share holding
// userDir/hello.txt.
func newShareDirs(t *testing.T) shareDirs {
	t.Helper()
	d := shareDirs{arcbox: t.TempDir(), users: t.TempDir(), userDir: "e2e-user"}
	bin := filepath.Join(d.arcbox, filepath.FromSlash(runtimeBinDir))
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range runtimeBinaries {
		copyFile(t, testenv.RequireBinary(t, b), filepath.Join(bin, b), 0o755)
	}
	d.hello = "written on the host " + newToken(t)[:16]
	if err := os.MkdirAll(filepath.Join(d.users, d.userDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.users, d.userDir, helloFile), []byte(d.hello+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// shares lists the directories as the boot gives them to QEMU. The
// runtime's binaries do not change under the VM, and are executed again
// and again (runc and the shim at each container): their pages are kept.
// The user's files may change on the host at any time.
func (d shareDirs) shares() []share {
	return []share{{tag: arcboxTag, dir: d.arcbox, cache: "always"}, {tag: usersTag, dir: d.users, cache: "auto"}}
}

// copyFile copies a host file rather than hard-linking it: the guest is
// root on the share, and must not reach the host's own binaries.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
}

// virtiofsd is one running virtiofsd and what it printed.
type virtiofsd struct {
	cmd    *exec.Cmd
	socket string
	exited chan struct{}
	mu     sync.Mutex
	out    bytes.Buffer
}

func (v *virtiofsd) Write(p []byte) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.out.Write(p)
}

func (v *virtiofsd) String() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.out.String()
}

// startVirtiofsd serves s.dir on a vhost-user socket in sockDir and
// returns once the socket is there for QEMU to connect to. It chroots
// into the directory rather than making namespaces, so it stays one
// process, ended by its PID. virtiofsd exits by itself when QEMU lets go
// of it; the cleanup waits for that, and kills it (and fails the test) if
// it did not.
func startVirtiofsd(t *testing.T, s share, sockDir string) *virtiofsd {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireFile(t, virtiofsdPath)
	v := &virtiofsd{socket: filepath.Join(sockDir, s.tag+".sock"), exited: make(chan struct{})}
	v.cmd = exec.Command(virtiofsdPath, "--socket-path="+v.socket,
		"-o", "source="+s.dir, "-o", "cache="+s.cache, "-o", "sandbox=chroot")
	v.cmd.Stdout, v.cmd.Stderr = v, v
	// Killed with the test binary too, should it die before its cleanup.
	v.cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := v.cmd.Start(); err != nil {
		t.Fatalf("start virtiofsd for %s: %v", s.tag, err)
	}
	var waitErr error
	go func() {
		waitErr = v.cmd.Wait()
		close(v.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-v.exited:
		case <-time.After(30 * time.Second):
			_ = v.cmd.Process.Kill()
			<-v.exited
			t.Errorf("virtiofsd for %s (pid %d) outlived QEMU; killed", s.tag, v.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("virtiofsd for %s ended (%v):\n%s", s.tag, waitErr, v)
		}
	})
	// Startup, with nothing to watch but the file: a poll with a cap.
	if !agenttest.WaitFor(30*time.Second, func() bool {
		select {
		case <-v.exited:
			return true
		default:
		}
		_, err := os.Stat(v.socket)
		return err == nil
	}) {
		t.Fatalf("virtiofsd for %s made no socket at %s in 30s:\n%s", s.tag, v.socket, v)
	}
	select {
	case <-v.exited:
		t.Fatalf("virtiofsd for %s exited at start (%v):\n%s", s.tag, waitErr, v)
	default:
	}
	return v
}

// shareArgs starts a virtiofsd per share and returns QEMU's arguments
// for them: a vhost-user-fs device each, tagged. vhost-user wants the
// guest's memory in a file the daemon maps too, which the memfd backend
// of boot gives it.
func shareArgs(t *testing.T, shares []share) []string {
	t.Helper()
	if len(shares) == 0 {
		return nil
	}
	sockDir := t.TempDir()
	var args []string
	for i, s := range shares {
		v := startVirtiofsd(t, s, sockDir)
		id := fmt.Sprintf("fs%d", i)
		args = append(args,
			"-chardev", fmt.Sprintf("socket,id=%s,path=%s", id, v.socket),
			"-device", fmt.Sprintf("vhost-user-fs-pci,chardev=%s,tag=%s", id, s.tag))
	}
	return args
}

// checkShares checks that the agent mounted the VM's shares by tag, each
// where its tag goes by default: /v1/info lists arcbox and users, and
// not private, whose device the VM lacks; neither with DAX, since QEMU's
// vhost-user-fs has no DAX window and the agent falls back without it;
// and the guest's mount table has them as virtiofs.
func (g *guest) checkShares(t *testing.T) {
	t.Helper()
	info, err := g.client.GetInfoWithResponse(context.Background())
	if err != nil || info.JSON200 == nil {
		t.Fatalf("info: %v %v", err, info)
	}
	got := map[string]api.Share{}
	for _, s := range agenttest.Deref(info.JSON200.Shares) {
		got[s.Tag] = s
	}
	want := map[string]string{arcboxTag: arcboxMount, usersTag: usersMount}
	for tag, path := range want {
		s, ok := got[tag]
		switch {
		case !ok:
			t.Errorf("info lists no %s share: %+v", tag, got)
		case s.Path != path:
			t.Errorf("the %s share is at %s, want %s", tag, s.Path, path)
		case s.Dax || strings.Contains(s.Options, "dax"):
			t.Errorf("the %s share says DAX (%+v), which QEMU's device cannot give", tag, s)
		}
	}
	if len(got) != len(want) {
		t.Errorf("info lists the shares %+v, want %s and %s alone", got, arcboxTag, usersTag)
	}
	mounts := g.guestMounts(t)
	for tag, path := range want {
		if !anyMatch(mounts, "^"+regexp.QuoteMeta(tag+" "+path+" virtiofs ")) {
			t.Errorf("the guest's mounts lack the %s share at %s: %q", tag, path, mounts)
		}
	}
}
