package oci

import (
	"context"
	"fmt"
	"testing"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// BenchmarkRestoreToReady: a sandbox that has written 50 MiB, reached two
// ways, with the state directory on btrfs (snapshots) and on the test's
// temporary directory (copies): created and made to write them (Create
// with a cmd, until its idle event), or restored from a checkpoint of one
// (Restore, which answers once ready). Plain create to ready is there too,
// for scale. Target: restore at most half of create-and-write.
func BenchmarkRestoreToReady(b *testing.B) {
	const write = "dd if=/dev/zero of=/blob bs=1048576 count=50 status=none"
	for _, fsys := range []string{"copy", "btrfs"} {
		stateDir := func(b *testing.B) []func(*Config) {
			if fsys != "btrfs" {
				return nil
			}
			dir := btrfsStateDir(b)
			return []func(*Config){func(c *Config) { c.StateDir = dir }}
		}
		b.Run(fsys+"/create", func(b *testing.B) {
			e := newOCIEnv(b, "runc", stateDir(b)...)
			e.timeEach(b, "c", func(id string) {
				if _, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: id}); err != nil {
					b.Fatal(err)
				}
				e.expect(id, sandbox.ActionReady)
			})
		})
		b.Run(fsys+"/create-and-write", func(b *testing.B) {
			e := newOCIEnv(b, "runc", stateDir(b)...)
			e.timeEach(b, "w", func(id string) {
				if _, _, err := e.m.Create(context.Background(), sandbox.Spec{ID: id, Cmd: []string{"sh", "-c", write}}); err != nil {
					b.Fatal(err)
				}
				if ev := e.expect(id, sandbox.ActionIdle); ev[0].Attributes["exit_code"] != "0" {
					b.Fatalf("the write failed: %v", ev[0].Attributes)
				}
			})
		})
		b.Run(fsys+"/restore", func(b *testing.B) {
			e := newOCIEnv(b, "runc", stateDir(b)...)
			e.create(sandbox.Spec{ID: "orig"})
			e.sh("orig", write)
			snap, err := e.m.Checkpoint(context.Background(), "orig", sandbox.CheckpointRequest{})
			if err != nil {
				b.Fatal(err)
			}
			e.timeEach(b, "r", func(id string) {
				if _, err := e.m.Restore(context.Background(), snap.ID, sandbox.RestoreRequest{ID: id}); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// timeEach times start(id) for b.N new sandboxes named prefix0, prefix1,
// ...; each is removed, untimed, before the next.
func (e *ociEnv) timeEach(b *testing.B, prefix string, start func(id string)) {
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("%s%d", prefix, i)
		e.track(id)
		start(id)
		b.StopTimer()
		if err := e.m.Remove(context.Background(), id, true); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
