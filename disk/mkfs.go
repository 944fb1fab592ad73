package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// mkfsCandidates are tried when mkfs.btrfs is not on PATH: the agent's PATH
// inside the VM may lack the sbin directories.
var mkfsCandidates = []string{"/sbin/mkfs.btrfs", "/usr/sbin/mkfs.btrfs"}

// mkfsBinary returns the mkfs.btrfs to run.
func (v *Volume) mkfsBinary() (string, error) {
	if v.cfg.MkfsPath != "" {
		return v.cfg.MkfsPath, nil
	}
	if p, err := exec.LookPath("mkfs.btrfs"); err == nil {
		return p, nil
	}
	for _, p := range mkfsCandidates {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("mkfs.btrfs not found on PATH nor in %s: %w", strings.Join(mkfsCandidates, ", "), ErrNotSupported)
}

// mkfs formats device as btrfs. force adds -f, which mkfs.btrfs needs to
// overwrite an existing signature; without it mkfs.btrfs's own probe is a
// second guard. A failure carries the command's output.
func (v *Volume) mkfs(ctx context.Context, device string, force bool) error {
	bin, err := v.mkfsBinary()
	if err != nil {
		return err
	}
	args := []string{device}
	if force {
		args = []string{"-f", device}
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	v.log.Info("formatting data device", "cmd", cmd.String())
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = errors.Join(err, ctxErr)
		}
		if msg := tail(out.Bytes(), 2048); msg != "" {
			return fmt.Errorf("%s: %w: %s", cmd.String(), err, msg)
		}
		return fmt.Errorf("%s: %w (no output)", cmd.String(), err)
	}
	return nil
}

// tail returns the last n bytes of b, trimmed, for error messages.
func tail(b []byte, n int) string {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = append([]byte("..."), b[len(b)-n:]...)
	}
	return string(b)
}
