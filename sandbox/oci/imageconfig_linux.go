package oci

import (
	"errors"
	"io/fs"

	"github.com/arcbox/arcbox-agent/sandbox"
)

// ImageConfig returns the config of the image sandbox id was made from, as
// its bundle keeps it (backend.json, read again after an agent restart and
// copied into a snapshot, so a restore keeps it too); nil before Start has
// written it, or after Destroy. For a sandbox made from a directory it is
// the zero config: the Manager asks only of sandboxes made from images.
func (b *Backend) ImageConfig(id string) (*sandbox.ImageConfig, error) {
	var meta bundleMeta
	if box, err := b.box(id); err == nil {
		meta = box.meta
	} else if meta, err = readBundleMeta(b.bundle(id)); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	cfg := meta.Image
	return &cfg, nil
}
