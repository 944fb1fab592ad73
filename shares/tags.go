package shares

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// TagInfo is what the kernel tells of the VM's virtio-fs devices.
type TagInfo struct {
	// Listed: the kernel lists its tags in /sys/fs/virtiofs/*/tag (Linux
	// 6.9 and later, once virtiofs is loaded), and Tags is the whole truth.
	Listed bool
	Tags   []string
	// Devices counts the virtio-fs devices on the virtio bus when there is
	// no listing: with none, no tag can exist; with some, only a mount
	// tells whether a tag is theirs. Negative: unknown.
	Devices int
}

// lacks reports whether tag certainly names no device of the VM.
func (t TagInfo) lacks(tag string) bool {
	if t.Listed {
		return !slices.Contains(t.Tags, tag)
	}
	return t.Devices == 0
}

// virtioFSDeviceID is the virtio device id of a file system device (the
// virtio specification's device type 26).
const virtioFSDeviceID = 26

// ReadTags reads sysfs under sysDir ("/sys"): the tags in fs/virtiofs, or,
// where the kernel has no such listing, how many devices under
// bus/virtio/devices are virtio-fs ones. A machine that is no VM has
// neither, and so no share.
func ReadTags(sysDir string) (TagInfo, error) {
	dir := filepath.Join(sysDir, "fs", "virtiofs")
	entries, err := os.ReadDir(dir)
	if err == nil {
		info := TagInfo{Listed: true}
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(dir, e.Name(), "tag"))
			if errors.Is(err, fs.ErrNotExist) {
				continue // the device went away while we looked
			}
			if err != nil {
				return TagInfo{}, fmt.Errorf("virtio-fs tag: %w", err)
			}
			info.Tags = append(info.Tags, strings.TrimSuffix(string(data), "\n"))
		}
		return info, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return TagInfo{}, fmt.Errorf("virtio-fs tags: %w", err)
	}
	devices, err := os.ReadDir(filepath.Join(sysDir, "bus", "virtio", "devices"))
	if errors.Is(err, fs.ErrNotExist) {
		return TagInfo{}, nil
	}
	if err != nil {
		return TagInfo{}, fmt.Errorf("virtio devices: %w", err)
	}
	var info TagInfo
	for _, d := range devices {
		// The device file holds the id in hex, "0x001a".
		data, err := os.ReadFile(filepath.Join(sysDir, "bus", "virtio", "devices", d.Name(), "device"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the device went away while we looked
		}
		if err != nil {
			return TagInfo{}, fmt.Errorf("virtio device: %w", err)
		}
		if id, err := strconv.ParseUint(strings.TrimSpace(string(data)), 0, 32); err == nil && id == virtioFSDeviceID {
			info.Devices++
		}
	}
	return info, nil
}
