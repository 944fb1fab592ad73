package client

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/arcbox/arcbox-agent/api"
)

// The files of a ready or running sandbox (/v1/sandboxes/{id}/files...).
// Paths are absolute, as the sandbox sees them, and resolved inside its
// root. Every answer outside 2xx is an *Error: 404 for a path that is
// not there, 409 for a sandbox that is not ready or running, 412 for a
// write whose condition did not hold, 304 for a read whose
// IfNoneMatch names the file's tag (the caller's copy is current: an
// *Error rather than an empty file, so it cannot be taken for one), 416
// for a range past the end.

// ReadFileOptions says what ReadFile reads.
type ReadFileOptions struct {
	// Range, when set, is one byte range as HTTP writes it:
	// "bytes=first-last", "bytes=first-" or "bytes=-suffixLength". The
	// agent ignores one it cannot serve as asked (several ranges) and
	// sends the whole file: see FileReader.Partial.
	Range string
	// IfRange, with Range, applies it only if the file still has this
	// ETag; else the whole (new) file comes.
	IfRange string
	// IfNoneMatch, when set, is an ETag (or several, comma-separated):
	// the file having one is a 304 *Error instead of its bytes.
	IfNoneMatch string
}

// FileReader is a file's bytes as the agent sends them, with what its
// headers say. Close it.
type FileReader struct {
	io.ReadCloser
	// ETag is the file's strong entity tag, for IfNoneMatch, IfRange and
	// WriteFileOptions.IfMatch.
	ETag string
	// Partial says the body is the range asked for, Offset bytes into
	// the file; else it is the whole file.
	Partial bool
	Offset  int64
	// Length is the body's length in bytes, Size the whole file's.
	Length, Size int64
	// ModTime is the file's modification time, to the second.
	ModTime time.Time
}

// ReadFile reads a regular file of sandbox id, streamed. A directory,
// FIFO, socket or device is a 400 *Error.
func (c *Client) ReadFile(ctx context.Context, id, path string, o ReadFileOptions) (*FileReader, error) {
	params := api.ReadSandboxFileParams{Path: path, Range: nonEmpty(o.Range), IfRange: nonEmpty(o.IfRange), IfNoneMatch: nonEmpty(o.IfNoneMatch)}
	req, err := api.NewReadSandboxFileRequest(c.server, id, &params)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	f := &FileReader{ReadCloser: resp.Body, ETag: resp.Header.Get("ETag"), Length: resp.ContentLength, Size: resp.ContentLength}
	f.ModTime, _ = http.ParseTime(resp.Header.Get("Last-Modified"))
	if resp.StatusCode == http.StatusPartialContent {
		f.Partial = true
		var last int64
		cr := resp.Header.Get("Content-Range")
		if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &f.Offset, &last, &f.Size); err != nil || last < f.Offset {
			_ = resp.Body.Close()
			return nil, fmt.Errorf("read %s: a 206 with Content-Range %q, want bytes first-last/size", path, cr)
		}
		f.Length = last - f.Offset + 1
	}
	return f, nil
}

// WriteFileOptions says how WriteFile writes.
type WriteFileOptions struct {
	// Mode is the new file's permission bits, with fs.ModeSetuid,
	// fs.ModeSetgid and fs.ModeSticky; 0: those of the file it
	// replaces, else 0644.
	Mode fs.FileMode
	// UID and GID, when set, are its owner and group as the sandbox sees
	// them (0 to 65535); unset: those of the file it replaces, else the
	// sandbox's root.
	UID, GID *int
	// IfMatch makes the write a compare-and-swap: the file must have this
	// ETag now (several comma-separated, or "*" for any), else a 412
	// *Error and nothing is written.
	IfMatch string
	// CreateOnly writes only if nothing is at the path (else a 412).
	CreateOnly bool
}

// WriteFile writes a regular file of sandbox id from r, streamed: r is
// read as the request is sent, never held whole, and the file is
// replaced only once all of it has arrived. It returns the new file's
// ETag, and whether it was created rather than replaced. The parent
// directory must exist; past the agent's upload limit it is a 413
// *Error, and nothing is written.
func (c *Client) WriteFile(ctx context.Context, id, path string, r io.Reader, o WriteFileOptions) (etag string, created bool, err error) {
	params := api.WriteSandboxFileParams{Path: path, Uid: o.UID, Gid: o.GID, IfMatch: nonEmpty(o.IfMatch)}
	if o.Mode != 0 {
		mode, err := octalMode(o.Mode)
		if err != nil {
			return "", false, fmt.Errorf("write %s: %w", path, err)
		}
		params.Mode = &mode
	}
	if o.CreateOnly {
		params.IfNoneMatch = new("*")
	}
	resp, err := Check(c.api.WriteSandboxFileWithBodyWithResponse(ctx, id, &params, "application/octet-stream", r))
	if err != nil {
		return "", false, err
	}
	etag = resp.HTTPResponse.Header.Get("ETag")
	if etag == "" {
		return "", false, fmt.Errorf("write %s: the agent answered %d without an ETag", path, resp.StatusCode())
	}
	return etag, resp.StatusCode() == http.StatusCreated, nil
}

// octalMode is mode as the agent takes it: octal permission bits with
// setuid (4000), setgid (2000) and sticky (1000).
func octalMode(mode fs.FileMode) (string, error) {
	if mode&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
		return "", fmt.Errorf("mode %v: only permission bits, setuid, setgid and sticky", mode)
	}
	m := uint32(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if mode&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return fmt.Sprintf("%04o", m), nil
}

// StatFile describes a file of sandbox id; a symlink is described, not
// followed.
func (c *Client) StatFile(ctx context.Context, id, path string) (api.FileInfo, error) {
	r, err := Check(c.api.StatSandboxFileWithResponse(ctx, id, &api.StatSandboxFileParams{Path: path}))
	if err != nil {
		return api.FileInfo{}, err
	}
	return jsonBody(r.JSON200, r.HTTPResponse)
}

// ListFiles lists a directory of sandbox id, depth levels deep (0 or 1:
// its own entries; at most 32), sorted by path. Truncated in the answer
// says entries past 10000 were left out.
func (c *Client) ListFiles(ctx context.Context, id, path string, depth int) (api.FileList, error) {
	params := api.ListSandboxFilesParams{Path: path}
	if depth > 0 {
		params.Depth = &depth
	}
	r, err := Check(c.api.ListSandboxFilesWithResponse(ctx, id, &params))
	if err != nil {
		return api.FileList{}, err
	}
	return jsonBody(r.JSON200, r.HTTPResponse)
}

// Mkdir makes a directory in sandbox id with mode (0: 0755) and returns
// it. With parents, missing parents are made too and an existing
// directory is no error; without, the parent must exist and the path
// must not (a 409 *Error).
func (c *Client) Mkdir(ctx context.Context, id, path string, parents bool, mode fs.FileMode) (api.FileInfo, error) {
	params := api.MakeSandboxDirectoryParams{Path: path}
	if parents {
		params.Parents = &parents
	}
	if mode != 0 {
		m, err := octalMode(mode)
		if err != nil {
			return api.FileInfo{}, fmt.Errorf("mkdir %s: %w", path, err)
		}
		params.Mode = &m
	}
	r, err := Check(c.api.MakeSandboxDirectoryWithResponse(ctx, id, &params))
	if err != nil {
		return api.FileInfo{}, err
	}
	if r.JSON201 != nil {
		return *r.JSON201, nil
	}
	return jsonBody(r.JSON200, r.HTTPResponse)
}

// RemoveFile removes a file, symlink or directory of sandbox id (a
// symlink, not its target). A directory that is not empty needs
// recursive (else a 409 *Error).
func (c *Client) RemoveFile(ctx context.Context, id, path string, recursive bool) error {
	params := api.RemoveSandboxFileParams{Path: path}
	if recursive {
		params.Recursive = &recursive
	}
	_, err := Check(c.api.RemoveSandboxFileWithResponse(ctx, id, &params))
	return err
}

// GetArchive streams a directory of sandbox id as a tar archive, its
// entries named relative to it. The agent cuts the connection on a
// failure once the archive has begun, so reading it then ends with an
// error, never a short archive's end. Close it.
func (c *Client) GetArchive(ctx context.Context, id, path string) (io.ReadCloser, error) {
	req, err := api.NewGetSandboxArchiveRequest(c.server, id, &api.GetSandboxArchiveParams{Path: path})
	if err != nil {
		return nil, err
	}
	return c.openStream(req.WithContext(ctx))
}

// PutArchive extracts the tar archive r into the directory path of
// sandbox id, streamed. The agent takes the whole archive before any
// entry lands in path, so one it refuses (a 400 *Error naming the
// entry: an absolute or climbing name, a device ...) or one over its
// upload limit (413) leaves nothing.
func (c *Client) PutArchive(ctx context.Context, id, path string, r io.Reader) error {
	_, err := Check(c.api.PutSandboxArchiveWithBodyWithResponse(ctx, id, &api.PutSandboxArchiveParams{Path: path}, "application/x-tar", r))
	return err
}

// nonEmpty is s's address, or nil for "".
func nonEmpty(s string) *string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return &s
}
