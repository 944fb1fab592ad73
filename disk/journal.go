package disk

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

const journalName = "format-intent.json"

// journal is the format intent journal: a small file written (and synced)
// before mkfs.btrfs runs and removed once the new filesystem has mounted.
// While it names a device, whatever a crash left on that device is a format
// of ours that never finished, which Ensure may redo.
type journal struct{ path string }

// formatIntent is the journal's content.
type formatIntent struct {
	Device  string    `json:"device"`  // the configured device path
	ID      string    `json:"id"`      // identity of the device (see deviceID)
	Started time.Time `json:"started"` // for people reading the file
}

// record writes the intent to format the device with identity id, durably:
// temporary file, fsync, rename, fsync of the directory.
func (j journal) record(device, id string) error {
	data, err := encodeIntent(formatIntent{Device: device, ID: id, Started: time.Now().UTC()})
	if err != nil {
		return fmt.Errorf("format journal: %w", err)
	}
	dir := filepath.Dir(j.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("format journal: %w", err)
	}
	tmp, err := os.CreateTemp(dir, journalName+".*")
	if err != nil {
		return fmt.Errorf("format journal: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("format journal: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("format journal: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("format journal: %w", err)
	}
	if err := os.Rename(tmp.Name(), j.path); err != nil {
		return fmt.Errorf("format journal: %w", err)
	}
	return syncDir(dir)
}

// pending reports whether the journal records an unfinished format of the
// device with identity id. A journal for another device does not count.
func (j journal) pending(id string) (bool, error) {
	data, err := os.ReadFile(j.path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("format journal: %w", err)
	}
	in, err := decodeIntent(data)
	if err != nil {
		return false, fmt.Errorf("format journal %s: %w", j.path, err)
	}
	return in.ID == id, nil
}

// encodeIntent is the journal's content for in: one line of JSON.
func encodeIntent(in formatIntent) ([]byte, error) {
	data, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// decodeIntent reads what encodeIntent wrote.
func decodeIntent(data []byte) (formatIntent, error) {
	var in formatIntent
	err := json.Unmarshal(data, &in)
	return in, err
}

// clear removes the journal once the format it records is complete.
func (j journal) clear() error {
	if err := os.Remove(j.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("format journal: %w", err)
	}
	return syncDir(filepath.Dir(j.path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("format journal: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("format journal: sync %s: %w", dir, err)
	}
	return nil
}
