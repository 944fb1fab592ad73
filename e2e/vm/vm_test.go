// Package vm boots the agent as PID 1 of a real VM under QEMU and checks it
// from the host: the listeners, the clock, the system facts, vsock inside
// the guest, the startup metrics, the VirtioFS shares (QEMU's virtiofsd
// serving host directories) mounted by tag, and a clean power-off; then,
// with Debian's containerd and dockerd on the arcbox share, the runtime on
// a virtio data disk: formatted btrfs when blank, `docker` through the
// agent's proxy reading a host file through the users share, dockerd's
// log read on the host, a sandbox checkpointed and restored as btrfs
// snapshots, a power-off through the API that leaves the volume clean, a
// file under the Docker data root that survives a reboot, and an ext4 disk
// refused and left intact.
package vm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

const (
	guestCPUs       = 2
	guestMemMiB     = 1024
	guestPort       = 8080
	guestDockerPort = 2375 // the Docker proxy's TCP port, when a boot asks for it
	// guestDockerVsockPort is given on the kernel command line; not the
	// default, so the metrics show the key was read.
	guestDockerVsockPort = 2377
	// dataDevice is the kernel command line's data device: the second
	// virtio disk, the first standing for a system disk it must not touch.
	dataDevice = "/dev/vdb"
)

// console collects the serial console's lines and wakes waiters on each.
type console struct {
	mu    sync.Mutex
	lines []string
	more  chan struct{}
}

func (c *console) add(line string) {
	c.mu.Lock()
	c.lines = append(c.lines, line)
	close(c.more)
	c.more = make(chan struct{})
	c.mu.Unlock()
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

// len is how many lines the console has shown.
func (c *console) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// linesFrom returns the lines from the i-th on.
func (c *console) linesFrom(i int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines[min(i, len(c.lines)):]...)
}

// wait returns the first line matching re, waiting up to timeout for it.
func (c *console) wait(re *regexp.Regexp, timeout time.Duration) (string, bool) {
	return c.waitFrom(0, re, timeout)
}

// waitFrom is wait for the lines from the from-th on.
func (c *console) waitFrom(from int, re *regexp.Regexp, timeout time.Duration) (string, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := from; ; {
		c.mu.Lock()
		for ; i < len(c.lines); i++ {
			if re.MatchString(c.lines[i]) {
				line := c.lines[i]
				c.mu.Unlock()
				return line, true
			}
		}
		more := c.more
		c.mu.Unlock()
		select {
		case <-more:
		case <-deadline.C:
			return "", false
		}
	}
}

type guest struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	console *console
	client  *api.ClientWithResponses
	sdk     *client.Client // the SDK's, over the same listener
	started time.Time
	exited  chan error
	// dockerHost is the host's way to the agent's Docker API proxy
	// (tcp://127.0.0.1:PORT), when the boot asked for it.
	dockerHost string
	// token is the bearer token the agent's TCP listeners want.
	token string
	// url is the host's way to the control API's TCP listener.
	url string
}

type bootOptions struct {
	// drives are raw image files attached as virtio-blk disks, in order:
	// /dev/vda, /dev/vdb.
	drives  []string
	initrd  string // default: the image's base initramfs
	docker  bool   // serve the Docker API proxy on TCP, forwarded from the host
	cmdline []string
	rtcBase string
	// shares are served by a virtiofsd each, as VirtioFS devices.
	shares []share
}

// boot starts QEMU under software emulation (KVM hangs Linux guests early
// on these machines), with no network but a port forwarded from loopback.
func boot(t *testing.T, im vmImage, opt bootOptions) *guest {
	t.Helper()
	qemu := testenv.RequireBinary(t, "qemu-system-x86_64")
	port := agenttest.FreePort(t)
	cmdline := append([]string{
		"console=ttyS0", "panic=-1", "loglevel=4",
		"arcbox.modules=" + strings.Join(modules, ","),
		"arcbox.net_address=eth0=10.0.2.15/24",
		"arcbox.docker_data_device=" + dataDevice,
		fmt.Sprintf("arcbox.guest_docker_vsock_port=%d", guestDockerVsockPort),
		"ARCBOX_LOG_FORMAT=json",
		fmt.Sprintf("ARCBOX_LISTEN=tcp://0.0.0.0:%d,vsock://:1024", guestPort),
		"ARCBOX_AUTH_TOKEN_FILE=/" + guestTokenFile,
		// An emulated guest on a loaded host starts dockerd in tens of
		// seconds, not the few a real VM takes: the start's waits are a
		// guard against a hang here, not a measure.
		"ARCBOX_CONTAINERD_START_TIMEOUT=5m", "ARCBOX_DOCKERD_START_TIMEOUT=10m",
	}, opt.cmdline...)
	hostfwd := fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:%d", port, guestPort)
	g := &guest{console: &console{more: make(chan struct{})}, exited: make(chan error, 1), token: im.token}
	if opt.docker {
		dport := agenttest.FreePort(t)
		g.dockerHost = fmt.Sprintf("tcp://127.0.0.1:%d", dport)
		hostfwd += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", dport, guestDockerPort)
		cmdline = append(cmdline, fmt.Sprintf("ARCBOX_DOCKER_LISTEN=tcp://0.0.0.0:%d", guestDockerPort))
	}
	initrd := im.initrd
	if opt.initrd != "" {
		initrd = opt.initrd
	}
	args := []string{
		"-machine", "q35,accel=tcg", "-cpu", "max", "-smp", fmt.Sprint(guestCPUs), "-m", fmt.Sprint(guestMemMiB),
		// The guest's memory is a memfd, shared, so that each virtiofsd
		// can map it: vhost-user devices want it so.
		"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", guestMemMiB), "-numa", "node,memdev=mem",
		"-kernel", im.kernel, "-initrd", initrd, "-append", strings.Join(cmdline, " "),
		"-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-nic", "user,restrict=on,model=virtio-net-pci," + hostfwd,
	}
	if opt.rtcBase != "" {
		args = append(args, "-rtc", "base="+opt.rtcBase)
	}
	for _, d := range opt.drives {
		args = append(args, "-drive", "file="+d+",if=virtio,format=raw")
	}
	args = append(args, shareArgs(t, opt.shares)...)
	g.cmd = exec.Command(qemu, args...)
	// Killed with the test binary too, should it die before its cleanup.
	g.cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	var err error
	if g.stdin, err = g.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := g.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	g.cmd.Stderr = g.cmd.Stdout
	g.started = time.Now()
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			g.console.add(strings.TrimRight(sc.Text(), "\r"))
		}
		g.exited <- g.cmd.Wait()
	}()
	t.Cleanup(func() {
		if g.cmd.ProcessState == nil {
			_ = g.cmd.Process.Kill()
			if err := <-g.exited; err != nil {
				t.Logf("QEMU, killed at cleanup: %v", err)
			}
		}
		if t.Failed() {
			t.Logf("guest console:\n%s", g.console)
		}
	})
	g.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	g.client = agenttest.Client(t, g.url, nil, g.token)
	g.sdk = agenttest.SDK(t, fmt.Sprintf("tcp://127.0.0.1:%d", port), client.WithToken(g.token))
	return g
}

// waitReady polls /readyz until the agent in the guest answers 200.
func (g *guest) waitReady(t *testing.T, timeout time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, err := g.client.GetReadyzWithResponse(ctx)
		cancel()
		if err == nil && r.StatusCode() == 200 {
			return time.Since(g.started)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent in the guest was not ready after %v: %v %v", timeout, err, r)
		}
		select {
		case err := <-g.exited:
			t.Fatalf("the VM exited while booting: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (g *guest) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(g.stdin, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

func (g *guest) expect(t *testing.T, pattern string, timeout time.Duration) string {
	t.Helper()
	line, ok := g.console.wait(regexp.MustCompile(pattern), timeout)
	if !ok {
		t.Fatalf("the console never showed %q", pattern)
	}
	return line
}

// shutdown sends SIGTERM to PID 1 from inside the guest and waits for the
// agent to power the machine off.
func (g *guest) shutdown(t *testing.T) {
	t.Helper()
	began := time.Now()
	g.send(t, "shutdown")
	g.waitPowerOff(t, began)
}

// powerOff asks the agent to power the machine off through the API, and
// waits for QEMU to end by itself.
func (g *guest) powerOff(t *testing.T) {
	t.Helper()
	began := time.Now()
	ctx, cancel := untilTestEnds(t)
	defer cancel()
	grace := int32(30)
	r, err := g.client.ShutdownSystemWithResponse(ctx, api.ShutdownRequest{Action: api.ShutdownRequestActionPoweroff, GraceSeconds: &grace})
	if err != nil || r.JSON202 == nil {
		t.Fatalf("POST /v1/system/shutdown: %v %v", err, r)
	}
	if a := r.JSON202; a.Action != api.ShutdownResponseActionPoweroff || a.GraceSeconds != grace {
		t.Errorf("the shutdown answered %+v, want a power-off with %d s of grace", *a, grace)
	}
	g.waitPowerOff(t, began)
}

// waitPowerOff waits for QEMU to exit, with status 0, and checks from
// the console that the agent powered off cleanly.
func (g *guest) waitPowerOff(t *testing.T, began time.Time) {
	t.Helper()
	select {
	case err := <-g.exited:
		if err != nil {
			t.Fatalf("QEMU exited with %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("the VM did not power off")
	}
	t.Logf("powered off %v after the shutdown order", time.Since(began).Round(time.Millisecond))
	log := g.console.String()
	for _, want := range []string{`"msg":"shutting down"`, `"msg":"stopped"`, "reboot: Power down"} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %q: the power-off was not clean", want)
		}
	}
	if strings.Contains(log, "Kernel panic") {
		t.Error("the kernel panicked")
	}
	if strings.Contains(log, g.token) {
		t.Error("the guest's console shows the bearer token")
	}
}

func TestMain(m *testing.M) { os.Exit(agenttest.Run(m)) }

func TestVM(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	began := time.Now()
	defer func() { t.Logf("the VM test took %v", time.Since(began).Round(time.Millisecond)) }()
	im := buildImage(t)
	t.Logf("image built in %v (%s)", im.built, im)

	shares := newShareDirs(t)

	t.Run("first boot", func(t *testing.T) {
		g := boot(t, im, bootOptions{rtcBase: "2000-01-01", cmdline: []string{"ARCBOX_LOG_LEVEL=debug"}, shares: shares.shares()})
		ready := g.waitReady(t, 3*time.Minute)
		t.Logf("boot to first answered request: %v", ready)
		ctx := context.Background()

		info, err := g.client.GetInfoWithResponse(ctx)
		if err != nil || info.JSON200 == nil {
			t.Fatalf("info: %v %v", err, info)
		}
		i := info.JSON200
		if i.KernelVersion != im.release || i.CpuCount != guestCPUs ||
			i.TotalMemory > guestMemMiB<<20 || i.TotalMemory < guestMemMiB<<20/2 {
			t.Errorf("info is not the VM's: kernel %s cpus %d memory %d", i.KernelVersion, i.CpuCount, i.TotalMemory)
		}
		if len(i.IpAddresses) == 0 || i.IpAddresses[0] != "10.0.2.15" {
			t.Errorf("ip addresses %v, want 10.0.2.15", i.IpAddresses)
		}
		if i.Errors != nil {
			t.Errorf("facts the VM's agent could not read: %v", *i.Errors)
		}

		// The TCP listener wants the token: without it, a 401.
		resp, err := http.Get(g.url + "/v1/ping")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("GET /v1/ping without the token: %s, want 401 with a challenge", resp.Status)
		}

		// The guest started in 2000: a ping with the host's time steps it.
		now := time.Now().UnixNano()
		p, err := g.client.PostPingWithResponse(ctx, api.PingRequest{TimestampNanos: &now})
		if err != nil {
			t.Fatalf("first ping: %v", err)
		} else if p.JSON200 == nil || p.JSON200.ClockStepped == nil || !*p.JSON200.ClockStepped {
			t.Fatalf("first ping: %s %s", p.Status(), p.Body)
		}
		if d := *p.JSON200.ClockDriftMs; d > -20*365*24*3600*1000 {
			t.Errorf("drift before the step = %d ms, want about 26 years behind", d)
		}
		// The step set the host's time as it was sent, so the guest is
		// behind by that request's transit, which on a loaded host with
		// an emulated guest can pass the 50 ms threshold: the second
		// ping steps again exactly when its drift says so.
		now = time.Now().UnixNano()
		p, err = g.client.PostPingWithResponse(ctx, api.PingRequest{TimestampNanos: &now})
		if err != nil {
			t.Fatalf("second ping: %v", err)
		} else if p.JSON200 == nil || p.JSON200.ClockStepped == nil || p.JSON200.ClockDriftMs == nil {
			t.Fatalf("second ping: %s %s", p.Status(), p.Body)
		}
		d := *p.JSON200.ClockDriftMs
		if d < -1000 || d > 1000 {
			t.Errorf("drift after the step = %d ms, want under a second", d)
		}
		abs := max(d, -d)
		if stepped := *p.JSON200.ClockStepped; (abs < 50 && stepped) || (abs > 51 && !stepped) {
			t.Errorf("second ping: drift %d ms, stepped %v; a step is due exactly past 50 ms", d, stepped)
		}

		m, err := g.client.GetMetricsWithResponse(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, phase := range []string{"config", "init", "modules", "network", "shares", "listen_control_tcp", "listen_control_vsock", "listen_docker_vsock"} {
			re := regexp.MustCompile(`arcbox_agent_startup_phase_end_seconds\{phase="` + regexp.QuoteMeta(phase) + `"\} (\S+)`)
			if mm := re.FindSubmatch(m.Body); mm == nil {
				t.Errorf("metrics lack the startup phase %q", phase)
			} else {
				t.Logf("startup phase %-28s ended %ss after exec", phase, mm[1])
			}
		}

		// The settings given on the kernel command line were read from it.
		for setting, key := range map[string]string{"data-device": "arcbox.docker_data_device", "guest-docker-vsock-port": "arcbox.guest_docker_vsock_port"} {
			g.expect(t, regexp.QuoteMeta(fmt.Sprintf("%q:%q", setting, "kernel command line "+key)), 10*time.Second)
		}

		g.checkShares(t)
		// The VM has no private share: a debug line, not a failure.
		g.expect(t, `"level":"DEBUG".*no such tag.*"tag":"`+privateTag+`"`, 10*time.Second)

		// Without --allow-cid 1, the guest's own vsock client is refused.
		g.expect(t, `^E2E-VSOCK: refused`, time.Minute)
		g.expect(t, `refused vsock peer`, 10*time.Second)
		g.shutdown(t)
	})

	t.Run("vsock allowed", func(t *testing.T) {
		g := boot(t, im, bootOptions{cmdline: []string{"ARCBOX_ALLOW_CID=1"}})
		g.waitReady(t, 3*time.Minute)
		g.expect(t, `^probe GET vsock://1:1024 /v1/ping: 200 `+regexp.QuoteMeta(`{"message":"pong","version":"`+agenttest.Version+`"}`), time.Minute)
		g.expect(t, `^E2E-VSOCK: ok`, 10*time.Second)
		// A VM without any VirtioFS device: the agent serves all the same.
		if info, err := g.client.GetInfoWithResponse(context.Background()); err != nil || info.JSON200 == nil {
			t.Errorf("info: %v %v", err, info)
		} else if sh := agenttest.Deref(info.JSON200.Shares); len(sh) != 0 {
			t.Errorf("info lists shares %+v in a VM that has none", sh)
		}
		g.shutdown(t)
	})

	im.addRuntime(t)
	t.Logf("runtime layer added in %v (%s)", im.runtimeBuilt, im.runtimeInitrd)
	testDataVolume(t, im, shares)
}
