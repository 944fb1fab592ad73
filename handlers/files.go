package handlers

// /v1/sandboxes/{id}/files...: a sandbox's files, raw, described, listed,
// made, removed, and as tar streams.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// DefaultFileUploadLimit bounds one upload (a file or an archive) when
// the agent is not told otherwise: 1 GiB.
const DefaultFileUploadLimit = 1 << 30

// maxListEntries bounds a listing (openapi.yaml's FileList.entries).
const maxListEntries = 10000

// fileTree opens sandbox id's files, or answers why not and returns nil.
func (a *API) fileTree(w http.ResponseWriter, r *http.Request, id, path string, write bool) sandbox.FileTree {
	if !checkPathID(w, id) {
		return nil
	}
	if err := sandbox.CheckFilePath("path", path); err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, err.Error())
		return nil
	}
	m := a.manager(w, r)
	if m == nil {
		return nil
	}
	tree, err := m.Files(id, write)
	if err != nil {
		writeFilesErr(w, err)
		return nil
	}
	return tree
}

// writeFilesErr answers an error of the files API: its own classes, then
// the sandbox manager's.
func writeFilesErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, sandbox.ErrTooLarge):
		httpapi.WriteError(w, http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, sandbox.ErrPrecondition):
		httpapi.WriteError(w, http.StatusPreconditionFailed, err.Error())
	default:
		writeSandboxErr(w, err)
	}
}

// uploadLimit is how many bytes one upload may have.
func (a *API) uploadLimit() int64 {
	if a.cfg.FileUploadLimit > 0 {
		return a.cfg.FileUploadLimit
	}
	return DefaultFileUploadLimit
}

// uploadBody is the request's body for an upload, or answers a 413 at
// once when its declared length is over the limit and returns nil. A
// body the router cut at its own limit reads as sandbox.ErrTooLarge.
func (a *API) uploadBody(w http.ResponseWriter, r *http.Request) io.Reader {
	limit := a.uploadLimit()
	if r.ContentLength > limit {
		httpapi.WriteError(w, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("the upload is %d bytes; the limit is %d", r.ContentLength, limit))
		return nil
	}
	if r.Body == nil {
		return http.NoBody
	}
	return tooLargeBody{r.Body}
}

type tooLargeBody struct{ r io.Reader }

func (b tooLargeBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = sandbox.Errorf(sandbox.ErrTooLarge, "the request body is over the router's limit of %d bytes", mbe.Limit)
	}
	return n, err
}

// fileInfo is the contract's form of a file.
func fileInfo(fi sandbox.FileInfo) api.FileInfo {
	out := api.FileInfo{
		Path:            fi.Path,
		Type:            api.FileInfoType(fi.Type),
		Size:            fi.Size,
		Mode:            fmt.Sprintf("%04o", fi.Mode),
		Uid:             int64(fi.UID),
		Gid:             int64(fi.GID),
		ModifiedAt:      fi.ModTime.Unix(),
		ModifiedAtNanos: ptr(int64(fi.ModTime.Nanosecond())),
	}
	if fi.LinkTarget != "" {
		out.LinkTarget = ptr(fi.LinkTarget)
	}
	if fi.ETag != "" {
		out.Etag = ptr(fi.ETag)
	}
	return out
}

// modeOwner reads the mode, uid and gid parameters.
func modeOwner(mode *string, uid, gid *int) (m, u, g *uint32, err error) {
	if m, err = parseMode(mode); err != nil {
		return nil, nil, nil, err
	}
	u, g, err = owners(uid, gid)
	return m, u, g, err
}

// parseMode reads an octal mode parameter.
func parseMode(s *string) (*uint32, error) {
	if s == nil {
		return nil, nil
	}
	v, err := strconv.ParseUint(*s, 8, 32)
	if err != nil || v > 0o7777 {
		return nil, sandbox.InvalidField("mode", "%q is no octal mode from 0 to 7777", *s)
	}
	m := uint32(v)
	return &m, nil
}

// owners reads the uid and gid parameters.
func owners(uid, gid *int) (u, g *uint32, err error) {
	conv := func(name string, v *int) (*uint32, error) {
		if v == nil {
			return nil, nil
		}
		if *v < 0 || *v > 65535 {
			return nil, sandbox.InvalidField(name, "%d is not from 0 to 65535", *v)
		}
		id := uint32(*v)
		return &id, nil
	}
	if u, err = conv("uid", uid); err != nil {
		return nil, nil, err
	}
	g, err = conv("gid", gid)
	return u, g, err
}

// etagMatch reports whether the If-None-Match or If-Range list matches
// the tag (strong comparison; "*" matches any).
func etagMatch(list, tag string) bool {
	for t := range strings.SplitSeq(list, ",") {
		if t = strings.TrimSpace(t); t == "*" || (t == tag && tag != "") {
			return true
		}
	}
	return false
}

// ReadSandboxFile serves GET /v1/sandboxes/{id}/files.
func (a *API) ReadSandboxFile(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.ReadSandboxFileParams) {
	tree := a.fileTree(w, r, id, params.Path, false)
	if tree == nil {
		return
	}
	defer tree.Close()
	f, fi, err := tree.Open(params.Path)
	if err != nil {
		writeFilesErr(w, err)
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("ETag", fi.ETag)
	h.Set("Last-Modified", fi.ModTime.UTC().Format(http.TimeFormat))
	h.Set("Accept-Ranges", "bytes")
	if params.IfNoneMatch != nil && etagMatch(*params.IfNoneMatch, fi.ETag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	start, length, status := int64(0), fi.Size, http.StatusOK
	if params.Range != nil && (params.IfRange == nil || etagMatch(*params.IfRange, fi.ETag)) {
		s, l, ok, satisfiable := parseRange(*params.Range, fi.Size)
		if !satisfiable {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", fi.Size))
			httpapi.WriteError(w, http.StatusRequestedRangeNotSatisfiable,
				fmt.Sprintf("header \"Range\": %q starts past the end of %s (%d bytes)", *params.Range, fi.Path, fi.Size))
			return
		}
		if ok {
			start, length, status = s, l, http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", s, s+l-1, fi.Size))
		}
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		writeFilesErr(w, err)
		return
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	w.WriteHeader(status)
	if _, err := io.CopyBuffer(w, io.LimitReader(f, length), make([]byte, downloadBufSize)); err != nil {
		a.log(r).Debug("file download cut", "id", id, "path", fi.Path, "err", err)
	}
}

// downloadBufSize is the buffer a download is copied through.
const downloadBufSize = 1 << 20

// parseRange reads a Range header of one byte range over a file of size
// bytes. ok is false for one to ignore (several ranges, or not parsable:
// the whole file is served); satisfiable is false for one that starts
// past the end.
func parseRange(h string, size int64) (start, length int64, ok, satisfiable bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, true
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, true
	}
	if first == "" { // the last n bytes
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, false, true
		}
		if n == 0 {
			return 0, 0, false, false
		}
		n = min(n, size)
		return size - n, n, true, true
	}
	s, err := strconv.ParseInt(first, 10, 64)
	if err != nil || s < 0 {
		return 0, 0, false, true
	}
	e := size - 1
	if last != "" {
		if e, err = strconv.ParseInt(last, 10, 64); err != nil || e < s {
			return 0, 0, false, true
		}
		e = min(e, size-1)
	}
	if s >= size {
		return 0, 0, false, false
	}
	return s, e - s + 1, true, true
}

// WriteSandboxFile serves PUT /v1/sandboxes/{id}/files.
func (a *API) WriteSandboxFile(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.WriteSandboxFileParams) {
	mode, uid, gid, err := modeOwner(params.Mode, params.Uid, params.Gid)
	if err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	o := sandbox.WriteOptions{Mode: mode, UID: uid, GID: gid, Limit: a.uploadLimit()}
	if params.IfMatch != nil {
		o.IfMatch = *params.IfMatch
	}
	if params.IfNoneMatch != nil {
		if strings.TrimSpace(*params.IfNoneMatch) != "*" {
			httpapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("header \"If-None-Match\": %q; a write takes only * (create, never replace)", *params.IfNoneMatch))
			return
		}
		o.CreateOnly = true
	}
	body := a.uploadBody(w, r)
	if body == nil {
		return
	}
	tree := a.fileTree(w, r, id, params.Path, true)
	if tree == nil {
		return
	}
	defer tree.Close()
	fi, created, err := tree.Write(r.Context(), params.Path, body, o)
	if err != nil {
		writeFilesErr(w, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	w.Header().Set("ETag", fi.ETag)
	httpapi.WriteJSON(w, status, fileInfo(fi))
}

// RemoveSandboxFile serves DELETE /v1/sandboxes/{id}/files.
func (a *API) RemoveSandboxFile(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.RemoveSandboxFileParams) {
	tree := a.fileTree(w, r, id, params.Path, true)
	if tree == nil {
		return
	}
	defer tree.Close()
	if err := tree.Remove(params.Path, params.Recursive != nil && *params.Recursive); err != nil {
		writeFilesErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// StatSandboxFile serves GET /v1/sandboxes/{id}/files/stat.
func (a *API) StatSandboxFile(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.StatSandboxFileParams) {
	tree := a.fileTree(w, r, id, params.Path, false)
	if tree == nil {
		return
	}
	defer tree.Close()
	fi, err := tree.Stat(params.Path)
	if err != nil {
		writeFilesErr(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, fileInfo(fi))
}

// ListSandboxFiles serves GET /v1/sandboxes/{id}/files/list.
func (a *API) ListSandboxFiles(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.ListSandboxFilesParams) {
	depth := 1
	if params.Depth != nil {
		depth = *params.Depth
	}
	if depth < 1 || depth > 32 {
		httpapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("parameter \"depth\": %d is not from 1 to 32", depth))
		return
	}
	tree := a.fileTree(w, r, id, params.Path, false)
	if tree == nil {
		return
	}
	defer tree.Close()
	entries, truncated, err := tree.List(params.Path, depth, maxListEntries)
	if err != nil {
		writeFilesErr(w, err)
		return
	}
	out := api.FileList{Entries: make([]api.FileInfo, 0, len(entries)), Truncated: truncated}
	for _, fi := range entries {
		out.Entries = append(out.Entries, fileInfo(fi))
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// MakeSandboxDirectory serves POST /v1/sandboxes/{id}/files/mkdir.
func (a *API) MakeSandboxDirectory(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.MakeSandboxDirectoryParams) {
	mode, uid, gid, err := modeOwner(params.Mode, params.Uid, params.Gid)
	if err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	tree := a.fileTree(w, r, id, params.Path, true)
	if tree == nil {
		return
	}
	defer tree.Close()
	o := sandbox.MkdirOptions{Parents: params.Parents != nil && *params.Parents, Mode: mode, UID: uid, GID: gid}
	fi, created, err := tree.Mkdir(params.Path, o)
	if err != nil {
		writeFilesErr(w, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	httpapi.WriteJSON(w, status, fileInfo(fi))
}

// GetSandboxArchive serves GET /v1/sandboxes/{id}/files/archive.
func (a *API) GetSandboxArchive(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.GetSandboxArchiveParams) {
	tree := a.fileTree(w, r, id, params.Path, false)
	if tree == nil {
		return
	}
	defer tree.Close()
	out := &archiveWriter{w: w}
	err := tree.WriteArchive(out, params.Path)
	switch {
	case err == nil && !out.started:
		out.start() // an empty archive is never empty: tar's end blocks
	case err != nil && !out.started:
		writeFilesErr(w, err)
	case err != nil:
		// The status is sent: cut the connection, so the client sees a
		// broken transfer rather than a short archive.
		a.log(r).Warn("archive cut", "id", id, "path", params.Path, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// archiveWriter sends the 200 and its headers with the archive's first
// bytes, so an error before them can still be answered as one.
type archiveWriter struct {
	w       http.ResponseWriter
	started bool
}

func (a *archiveWriter) start() {
	a.started = true
	a.w.Header().Set("Content-Type", "application/x-tar")
	a.w.WriteHeader(http.StatusOK)
}

func (a *archiveWriter) Write(p []byte) (int, error) {
	if !a.started {
		a.start()
	}
	return a.w.Write(p)
}

// PutSandboxArchive serves PUT /v1/sandboxes/{id}/files/archive.
func (a *API) PutSandboxArchive(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.PutSandboxArchiveParams) {
	body := a.uploadBody(w, r)
	if body == nil {
		return
	}
	tree := a.fileTree(w, r, id, params.Path, true)
	if tree == nil {
		return
	}
	defer tree.Close()
	if err := tree.ExtractArchive(params.Path, body, a.uploadLimit()); err != nil {
		writeFilesErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
