package sandbox

// Files: a live sandbox's files, read and written by the agent on the
// host app's behalf (the files API), through Backend.OpenFiles.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// The error classes of the files API besides the Manager's (errors.go).
var (
	// ErrPrecondition: a write's If-Match or If-None-Match did not hold;
	// nothing was written.
	ErrPrecondition = errors.New("precondition failed")
	// ErrTooLarge: an upload went past its limit; nothing was written.
	ErrTooLarge = errors.New("too large")
)

// MaxFilePath is the longest path the files API takes (PATH_MAX, less its NUL).
const MaxFilePath = 4095

// FileType is what kind of file a path names.
type FileType string

// The file types.
const (
	FileRegular   FileType = "file"
	FileDir       FileType = "dir"
	FileSymlink   FileType = "symlink"
	FileFIFO      FileType = "fifo"
	FileSocket    FileType = "socket"
	FileCharDev   FileType = "char_device"
	FileBlockDev  FileType = "block_device"
	FileUnknown   FileType = "unknown"
	overflowOwner          = 65534 // the owner the kernel shows for an id outside the range
)

// FileInfo is a file as the sandbox sees it.
type FileInfo struct {
	Path string // absolute, as the sandbox sees it
	Type FileType
	Size int64
	// Mode is the permission bits with setuid, setgid and sticky (07777).
	Mode uint32
	// UID and GID are as the sandbox sees them: 65534 for an owner
	// outside its user namespace's range.
	UID, GID   uint32
	ModTime    time.Time
	LinkTarget string // a symlink's target, as written
	// ETag is a regular file's entity tag (quoted); it changes whenever
	// the file is replaced (each write through the files API is) or its
	// size, modification or change time does.
	ETag string
}

// WriteOptions are a file write's.
type WriteOptions struct {
	// Mode, UID and GID (as the sandbox sees them) are the new file's;
	// nil: those of the file it replaces, else 0644 and the sandbox's root.
	Mode     *uint32
	UID, GID *uint32
	// IfMatch, when set, is the entity tags (comma-separated, or "*")
	// one of which the file must have now, else ErrPrecondition.
	IfMatch string
	// CreateOnly (If-None-Match: *): ErrPrecondition if the path exists.
	CreateOnly bool
	// Limit is how many bytes the body may have; past it the write is
	// ErrTooLarge and leaves nothing.
	Limit int64
}

// MkdirOptions are a mkdir's.
type MkdirOptions struct {
	Parents  bool    // make missing parents; an existing directory is no error
	Mode     *uint32 // nil: 0755
	UID, GID *uint32 // as the sandbox sees them; nil: the sandbox's root
}

// FileTree is a live sandbox's file tree, opened by Manager.Files for
// one request. Every path is absolute, as the sandbox sees it, and is
// resolved inside the sandbox's root: no symlink or mount leads out of it.
// Errors are of the Manager's classes, or ErrPrecondition or ErrTooLarge,
// and name the path.
type FileTree interface {
	// Stat describes path; a symlink is described, not followed.
	Stat(path string) (FileInfo, error)
	// List lists the directory path (following a symlink to it) and its
	// subdirectories down to depth levels (1: its own entries), sorted
	// by path, at most max entries; truncated says some were left out.
	// Symlinks to directories are not descended.
	List(path string, depth, max int) (entries []FileInfo, truncated bool, err error)
	// Open opens the regular file path (following symlinks) for reading.
	Open(path string) (*os.File, FileInfo, error)
	// Write replaces path with body, atomically: it is written to a
	// temporary file beside it, then renamed over it. A symlink at path is
	// replaced, not followed. created says there was no file before.
	Write(ctx context.Context, path string, body io.Reader, o WriteOptions) (info FileInfo, created bool, err error)
	// Mkdir makes the directory path; created is false when it existed
	// (only with Parents).
	Mkdir(path string, o MkdirOptions) (info FileInfo, created bool, err error)
	// Remove removes path (a symlink, not its target); a directory that is
	// not empty needs recursive.
	Remove(path string, recursive bool) error
	// WriteArchive writes the directory path (following a symlink to it)
	// to w as a tar stream (PAX where the names need it), its entries
	// named relative to it.
	WriteArchive(w io.Writer, path string) error
	// ExtractArchive extracts the tar stream r, at most limit bytes of it,
	// into the existing directory path. The whole archive is extracted and
	// checked in a temporary directory inside path first: an entry named
	// absolute or with "..", a hard link to outside the archive, or a
	// device is refused and nothing is written.
	ExtractArchive(path string, r io.Reader, limit int64) error
	// Close releases the tree.
	Close() error
}

// FilesRequest is what Backend.OpenFiles is told of the sandbox.
type FilesRequest struct {
	// IDMap is the sandbox's user namespace's range; zero Size: none.
	IDMap IDMap
	// ReadOnly, when set, says why the tree is for reading only: its
	// writes are ErrConflict with that reason.
	ReadOnly string
}

// Files opens a sandbox's file tree for one request; the caller closes
// it. The sandbox must be ready or running (ErrConflict else): its root
// filesystem is mounted then. write says the request changes files,
// which a sandbox with a read-only root, or one being checkpointed,
// refuses (ErrConflict).
//
// A stop that begins while the tree is open does not wait for it: the
// tree's requests go on in the sandbox's detached root until they end.
func (m *Manager) Files(id string, write bool) (FileTree, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("files of sandbox %q: %w", id, errClosed)
	}
	sb, err := m.lookupLocked(id)
	if err != nil {
		m.mu.Unlock()
		return nil, err
	}
	if err := filesStateLocked(sb, write); err != nil {
		m.mu.Unlock()
		return nil, err
	}
	var req FilesRequest
	if sb.rec.IDMap != nil {
		req.IDMap = *sb.rec.IDMap
	}
	if !write {
		req.ReadOnly = "opened for reading"
	}
	m.mu.Unlock()

	tree, err := m.backend.OpenFiles(id, req)
	if err != nil {
		return nil, fmt.Errorf("files of sandbox %q: %w", id, err)
	}
	// A stop leaves ready and running before it unmounts the root: still
	// live now, the tree was opened on the mounted root.
	m.mu.Lock()
	if m.boxes[id] != sb {
		err = Errorf(ErrNotFound, "sandbox %q", id)
	} else {
		err = filesStateLocked(sb, false)
	}
	m.mu.Unlock()
	if err != nil {
		tree.Close()
		return nil, err
	}
	return tree, nil
}

// filesStateLocked refuses a sandbox whose root is not mounted; m.mu is
// held.
func filesStateLocked(sb *sandbox, write bool) error {
	switch sb.rec.State {
	case StateReady, StateRunning:
	default:
		return Errorf(ErrConflict, "sandbox %q is %s; its files can be reached while it is ready or running", sb.id, sb.rec.State)
	}
	switch {
	case !write:
	case sb.rec.Spec.Security.ReadOnlyRootfs:
		return Errorf(ErrConflict, "sandbox %q has a read-only root filesystem", sb.id)
	case sb.checkpointing:
		return Errorf(ErrConflict, "sandbox %q is being checkpointed; write again when it is done", sb.id)
	}
	return nil
}

// CheckFilePath checks a path given to the files API: absolute, without
// NUL bytes or ".." components, at most MaxFilePath bytes. field names it
// in the error.
func CheckFilePath(field, p string) error {
	switch {
	case p == "":
		return InvalidField(field, "is required: an absolute path in the sandbox")
	case strings.IndexByte(p, 0) >= 0:
		return InvalidField(field, "%q holds a NUL byte", p)
	case len(p) > MaxFilePath:
		return InvalidField(field, "is %d bytes; the limit is %d", len(p), MaxFilePath)
	case p[0] != '/':
		return InvalidField(field, "%q is not absolute: give the path as the sandbox sees it, from /", p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return InvalidField(field, "%q has a \"..\" component; give the path without it", p)
		}
	}
	return nil
}

// ToHost is the host id of id as a sandbox of range m sees it; an error
// names field when the range has no such id.
func (m IDMap) ToHost(field string, id uint32) (uint32, error) {
	if m.Size == 0 {
		return id, nil
	}
	if id >= m.Size {
		return 0, InvalidField(field, "%d is outside the sandbox's user namespace (0 to %d)", id, m.Size-1)
	}
	return m.HostID + id, nil
}

// ToSandbox is what a sandbox of range m sees of host id: 65534, the
// overflow id, for one outside the range.
func (m IDMap) ToSandbox(host uint32) uint32 {
	if m.Size == 0 {
		return host
	}
	if host < m.HostID || host-m.HostID >= m.Size {
		return overflowOwner
	}
	return host - m.HostID
}
