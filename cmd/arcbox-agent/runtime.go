package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arcbox/arcbox-agent/disk"
	"github.com/arcbox/arcbox-agent/lifecycle"
	"github.com/arcbox/arcbox-agent/startup"
)

// newVolume is the data volume: btrfs with the daemons' subvolumes, the
// configured extra ones and, with --state-on-data-volume, @arcbox at the
// state dir.
func newVolume(cfg *config, logger *slog.Logger) (*disk.Volume, error) {
	subvols := append([]disk.Subvolume{
		{Name: "@docker", Target: cfg.DockerDataRoot},
		{Name: "@containerd", Target: cfg.ContainerdRoot},
	}, cfg.DataSubvolumes...)
	if cfg.StateOnDataVolume {
		subvols = append(subvols, disk.Subvolume{Name: stateSubvolume, Target: cfg.StateDir})
	}
	vol, err := disk.NewVolume(disk.Config{
		Device:     cfg.DataDevice,
		Wipe:       cfg.WipeDataDevice,
		MountPoint: cfg.DataMount,
		StateDir:   cfg.DiskStateDir,
		Subvolumes: subvols,
		Logger:     logger,
	})
	if err != nil {
		return nil, fmt.Errorf("data volume: %w", err)
	}
	return vol, nil
}

// prepareStateDir mounts the state dir from the data volume before the
// sandboxes and the event journal start, formatting a blank volume as
// ensure would: the same Ensure, so ensure later finds it done. A volume
// that carries another filesystem is refused as ever.
func (a *agent) prepareStateDir(ctx context.Context) error {
	note, err := a.volume.Ensure(ctx)
	if err != nil {
		return err
	}
	a.logger.Info("the state dir is on the data volume", "state_dir", a.cfg.StateDir, "note", note)
	return nil
}

// stateSubvolume holds the sandboxes, their snapshots and the event
// journal when --state-on-data-volume is on.
const stateSubvolume = "@arcbox"

// newRuntime builds the container runtime over the data volume. start
// starts the daemons (the reaper's, when init); onPhase publishes each
// phase of a start as it ends (pendingManager.publishRuntimePhase).
func newRuntime(cfg *config, vol *disk.Volume, logger *slog.Logger, phases *startup.Phases, reg prometheus.Registerer,
	start func(*exec.Cmd) error, onPhase func(lifecycle.Phase)) (*lifecycle.Runtime, error) {
	return lifecycle.New(lifecycle.Config{
		RuntimeBinDir:     cfg.RuntimeBinDir,
		ContainerdSocket:  cfg.ContainerdSocket,
		DockerSocket:      cfg.DockerSocket,
		Endpoint:          dockerEndpoint(cfg.DockerListen),
		ContainerdRoot:    cfg.ContainerdRoot,
		ContainerdState:   cfg.ContainerdState,
		ContainerdConfig:  cfg.ContainerdConfig,
		DockerDataRoot:    cfg.DockerDataRoot,
		DockerExecRoot:    cfg.DockerExecRoot,
		ExtraDockerdArgs:  cfg.DockerdArgs,
		ContainerdTimeout: cfg.ContainerdStartTimeout,
		DockerdTimeout:    cfg.DockerdStartTimeout,
		LogDir:            logDir(cfg),
		PrepareSystem:     cfg.PrepareSystem,
		NTPServer:         cfg.NTPServer,
		Volume:            dataVolume{vol},
		Logger:            logger,
		Phases:            phases,
		Registerer:        reg,
		OnPhase:           onPhase,
		StartProcess:      start,
	})
}

// logDir is where the daemons log: --log-dir, or by default the arcbox
// share's log directory when /arcbox is there (the host reads it), as the
// seed did; else /var/log/arcbox. Decided once the shares are mounted.
func logDir(cfg *config) string {
	if cfg.LogDir != "" {
		return cfg.LogDir
	}
	if fi, err := os.Stat("/arcbox"); err == nil && fi.IsDir() {
		return "/arcbox/log"
	}
	return "/var/log/arcbox"
}

// dockerEndpoint is where the host reaches dockerd, as the seed said it:
// vsock:<port>, or the listener URL when it is not vsock.
func dockerEndpoint(listen string) string {
	u, err := url.Parse(listen)
	if err == nil && u.Scheme == "vsock" {
		return "vsock:" + u.Port()
	}
	return listen
}

// dataVolume is the disk volume as the runtime sees it.
type dataVolume struct{ v *disk.Volume }

func (d dataVolume) Ensure(ctx context.Context) (string, error) { return d.v.Ensure(ctx) }

// Service reports the volume in the runtime's status: device, filesystem,
// whether it is mounted, and the free space.
func (d dataVolume) Service() lifecycle.Service {
	st := d.v.Status()
	ss := d.v.ServiceStatus()
	parts := []string{"device " + st.Device}
	if st.Filesystem != "" {
		parts = append(parts, "filesystem "+st.Filesystem)
	}
	if st.Mounted {
		parts = append(parts, "mounted", fmt.Sprintf("%d bytes free", st.FreeBytes))
	} else {
		parts = append(parts, "not mounted")
	}
	if st.Detail != "" {
		parts = append(parts, st.Detail)
	}
	return lifecycle.Service{Name: ss.Name, Status: ss.Status, Detail: strings.Join(parts, "; ")}
}

// ociRuntime is the configured OCI runtime; when none is configured and
// neither crun nor runc is on PATH, the runtime directory's (a VM image
// ships runc there for containerd).
func ociRuntime(cfg *config) string {
	if cfg.OCIRuntime != "" {
		return cfg.OCIRuntime
	}
	for _, name := range []string{"crun", "runc"} {
		if _, err := exec.LookPath(name); err == nil {
			return ""
		}
	}
	for _, name := range []string{"crun", "runc"} {
		p := filepath.Join(cfg.RuntimeBinDir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}
