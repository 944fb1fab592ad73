package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// recordVersion is the version of record.json's layout.
const recordVersion = 1

const recordFile = "record.json"

// record is what the agent keeps of a sandbox across restarts, in
// StateDir/sandboxes/<id>/record.json.
type record struct {
	Version      int        `json:"version"`
	Spec         Spec       `json:"spec"`
	State        State      `json:"state"`
	CreatedAt    time.Time  `json:"created_at"`
	ReadyAt      time.Time  `json:"ready_at,omitzero"`
	LastExitedAt time.Time  `json:"last_exited_at,omitzero"`
	LastExitCode *int       `json:"last_exit_code,omitempty"`
	Error        string     `json:"error,omitempty"`
	Run          *runRecord `json:"run,omitempty"` // the workload in progress, if any
	// IPAddress and Gateway are a bridged sandbox's address, held from
	// its creation to its removal, and the bridge's.
	IPAddress string `json:"ip_address,omitempty"`
	Gateway   string `json:"gateway,omitempty"`
	// Restored names the snapshot the sandbox was restored from, if it was.
	Restored *restoredFrom `json:"restored_from,omitempty"`
}

// restoredFrom is the snapshot a sandbox was made from.
type restoredFrom struct {
	SnapshotID string `json:"snapshot_id"`
}

// runRecord is a workload in progress.
type runRecord struct {
	Cmd       []string  `json:"cmd"`
	StartedAt time.Time `json:"started_at"`
}

func (r record) clone() record {
	c := r
	if r.LastExitCode != nil {
		code := *r.LastExitCode
		c.LastExitCode = &code
	}
	if r.Restored != nil {
		from := *r.Restored
		c.Restored = &from
	}
	if r.Run != nil {
		run := *r.Run
		run.Cmd = slices.Clone(r.Run.Cmd)
		c.Run = &run
	}
	return c
}

// writeRecord stores rec in dir atomically, a temporary file renamed over
// the old one, so that an agent that dies at any point leaves the old
// record or the new one. It does not fsync: a record only has to survive
// the agent, not the machine, since no sandbox survives a reboot (the next
// agent finds the init gone and fails the sandbox, whatever the record
// says), and two fsyncs per run were a tenth of a `true` run's time.
func writeRecord(dir string, rec record) error {
	rec.Version = recordVersion
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	return replaceFile(filepath.Join(dir, recordFile), data, 0o600, false)
}

// readRecord loads the record in dir.
func readRecord(dir string) (record, error) {
	var rec record
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, fmt.Errorf("decode %s: %w", filepath.Join(dir, recordFile), err)
	}
	if rec.Version != recordVersion {
		return rec, fmt.Errorf("%s: record version %d, want %d", filepath.Join(dir, recordFile), rec.Version, recordVersion)
	}
	if !rec.State.Valid() {
		return rec, fmt.Errorf("%s: unknown state %q", filepath.Join(dir, recordFile), rec.State)
	}
	return rec, nil
}

// writeFileAtomic replaces path with data so that a crash, of the agent or
// of the machine, leaves either the old content or the new, never a mix.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return replaceFile(path, data, perm, true)
}

// replaceFile writes data to a temporary file and renames it over path;
// durable fsyncs the file before the rename and the directory after.
func replaceFile(path string, data []byte, perm fs.FileMode, durable bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if durable {
		if err = f.Sync(); err != nil {
			return err
		}
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	if !durable {
		return nil
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
