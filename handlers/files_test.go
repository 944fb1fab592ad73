package handlers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// fakeFileData and fakeETag are every file of the fake tree.
var fakeFileData = []byte("0123456789abcdef")

const fakeETag = `"fa4e-1"`

// Files gives the fake manager a files API whose tree has a file at every
// path but /missing (and is a directory at /dir).
func (f *fakeSandboxes) Files(id string, write bool) (sandbox.FileTree, error) {
	if f.err != nil {
		return nil, f.err
	}
	return fakeTree{}, nil
}

type fakeTree struct{}

func fakeInfo(p string) sandbox.FileInfo {
	return sandbox.FileInfo{Path: p, Type: sandbox.FileRegular, Size: int64(len(fakeFileData)), Mode: 0o644,
		UID: 1000, GID: 1000, ModTime: time.Unix(100, 5), ETag: fakeETag}
}

func fakeFind(p string) error {
	if p == "/missing" {
		return sandbox.Errorf(sandbox.ErrNotFound, "field %q: %q: no such file or directory", "path", p)
	}
	return nil
}

func (fakeTree) Stat(p string) (sandbox.FileInfo, error) {
	if err := fakeFind(p); err != nil {
		return sandbox.FileInfo{}, err
	}
	return fakeInfo(p), nil
}

func (fakeTree) List(p string, depth, max int) ([]sandbox.FileInfo, bool, error) {
	if err := fakeFind(p); err != nil {
		return nil, false, err
	}
	link := fakeInfo(p + "/link")
	link.Type, link.LinkTarget, link.ETag = sandbox.FileSymlink, "/etc", ""
	return []sandbox.FileInfo{fakeInfo(p + "/a"), link}, depth < 2, nil
}

func (fakeTree) Open(p string) (*os.File, sandbox.FileInfo, error) {
	if err := fakeFind(p); err != nil {
		return nil, sandbox.FileInfo{}, err
	}
	if p == "/dir" {
		return nil, sandbox.FileInfo{}, sandbox.InvalidField("path", "%q is a directory", p)
	}
	f, err := os.CreateTemp("", "fake-file-")
	if err != nil {
		return nil, sandbox.FileInfo{}, err
	}
	os.Remove(f.Name())
	if _, err := f.Write(fakeFileData); err != nil {
		f.Close()
		return nil, sandbox.FileInfo{}, err
	}
	return f, fakeInfo(p), nil
}

func (fakeTree) Write(_ context.Context, p string, body io.Reader, o sandbox.WriteOptions) (sandbox.FileInfo, bool, error) {
	n, err := io.Copy(io.Discard, io.LimitReader(body, o.Limit+1))
	switch {
	case err != nil:
		return sandbox.FileInfo{}, false, err
	case n > o.Limit:
		return sandbox.FileInfo{}, false, sandbox.Errorf(sandbox.ErrTooLarge, "over %d bytes", o.Limit)
	case o.CreateOnly && p != "/missing":
		return sandbox.FileInfo{}, false, sandbox.Errorf(sandbox.ErrPrecondition, "%q exists", p)
	case o.IfMatch != "" && o.IfMatch != fakeETag:
		return sandbox.FileInfo{}, false, sandbox.Errorf(sandbox.ErrPrecondition, "%q has changed", p)
	}
	fi := fakeInfo(p)
	fi.Size = n
	return fi, p == "/missing", nil
}

func (fakeTree) Mkdir(p string, o sandbox.MkdirOptions) (sandbox.FileInfo, bool, error) {
	fi := fakeInfo(p)
	fi.Type, fi.ETag = sandbox.FileDir, ""
	return fi, p == "/missing" || !o.Parents, nil
}

func (fakeTree) Remove(p string, recursive bool) error { return fakeFind(p) }

func (fakeTree) WriteArchive(w io.Writer, p string) error {
	if err := fakeFind(p); err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o644, Size: int64(len(fakeFileData))}); err != nil {
		return err
	}
	if _, err := tw.Write(fakeFileData); err != nil {
		return err
	}
	return tw.Close()
}

func (fakeTree) ExtractArchive(p string, r io.Reader, limit int64) error {
	if err := fakeFind(p); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return sandbox.InvalidField("body", "not a readable tar stream: %v", err)
		}
	}
}

func (fakeTree) Close() error { return nil }

// fileRequest makes a request of the files API, checked against the
// contract.
func fileRequest(t *testing.T, h *harness, method, path string, body io.Reader, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.url+path, body)
	must(t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := &http.Client{Transport: &apitest.Transport{T: t}}
	resp, err := c.Do(req)
	must(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	must(t, err)
	return resp, data
}

// TestReadFileRanges: the whole file with its ETag, one range (206 with
// Content-Range), a suffix, a range past the end (416, JSON), several
// ranges or If-Range with another tag (200, whole), If-None-Match (304).
func TestReadFileRanges(t *testing.T) {
	h := newContractHarness(t)
	const u = "/v1/sandboxes/box/files?path=/f"
	for _, c := range []struct {
		header     map[string]string
		status     int
		body       string
		contentRng string
	}{
		{nil, 200, string(fakeFileData), ""},
		{map[string]string{"Range": "bytes=2-5"}, 206, "2345", "bytes 2-5/16"},
		{map[string]string{"Range": "bytes=10-"}, 206, "abcdef", "bytes 10-15/16"},
		{map[string]string{"Range": "bytes=-3"}, 206, "def", "bytes 13-15/16"},
		{map[string]string{"Range": "bytes=14-100"}, 206, "ef", "bytes 14-15/16"},
		{map[string]string{"Range": "bytes=16-"}, 416, "", "bytes */16"},
		{map[string]string{"Range": "bytes=0-1,4-5"}, 200, string(fakeFileData), ""},
		{map[string]string{"Range": "lines=1-2"}, 200, string(fakeFileData), ""},
		{map[string]string{"Range": "bytes=2-5", "If-Range": `"other"`}, 200, string(fakeFileData), ""},
		{map[string]string{"Range": "bytes=2-5", "If-Range": fakeETag}, 206, "2345", "bytes 2-5/16"},
		{map[string]string{"If-None-Match": fakeETag}, 304, "", ""},
		{map[string]string{"If-None-Match": `"other"`}, 200, string(fakeFileData), ""},
	} {
		resp, body := fileRequest(t, h, "GET", u, nil, c.header)
		if resp.StatusCode != c.status || resp.Header.Get("Content-Range") != c.contentRng {
			t.Errorf("%v: %d %q (Content-Range %q), want %d (%q)", c.header, resp.StatusCode, body, resp.Header.Get("Content-Range"), c.status, c.contentRng)
			continue
		}
		if c.status == 416 {
			if !strings.Contains(string(body), `"code":416`) {
				t.Errorf("%v: body %s, want the JSON error", c.header, body)
			}
			continue
		}
		if string(body) != c.body || resp.Header.Get("ETag") != fakeETag {
			t.Errorf("%v: body %q, ETag %q; want %q, %s", c.header, body, resp.Header.Get("ETag"), c.body, fakeETag)
		}
	}
}

// TestFilesBadInput: a relative path, a NUL byte, "..", a bad mode or
// owner, a bad If-None-Match are 400 naming what is wrong; an unknown
// file 404; a directory read 400.
func TestFilesBadInput(t *testing.T) {
	h := newContractHarness(t)
	for _, c := range []struct {
		method, path string
		status       int
		names        string
		header       map[string]string
	}{
		{"GET", "/v1/sandboxes/box/files?path=etc/passwd", 400, `\"path\"`, nil},
		{"GET", "/v1/sandboxes/box/files?path=/etc%00x", 400, `\"path\"`, nil},
		{"GET", "/v1/sandboxes/box/files/stat?path=/a/../../etc", 400, `\"path\"`, nil},
		{"GET", "/v1/sandboxes/box/files/list?path=", 400, "path", nil},
		{"GET", "/v1/sandboxes/box/files?path=/missing", 404, `\"path\"`, nil},
		{"GET", "/v1/sandboxes/box/files?path=/dir", 400, `\"path\"`, nil},
		{"PUT", "/v1/sandboxes/box/files?path=/f&mode=0999", 400, "mode", nil},
		{"PUT", "/v1/sandboxes/box/files?path=/f&uid=70000", 400, "uid", nil},
		{"POST", "/v1/sandboxes/box/files/mkdir?path=/d&gid=-1", 400, "gid", nil},
		{"PUT", "/v1/sandboxes/box/files?path=/f", 400, "If-None-Match", map[string]string{"If-None-Match": fakeETag}},
		{"GET", "/v1/sandboxes/box/files/list?path=/d&depth=40", 400, "depth", nil},
	} {
		req, err := http.NewRequest(c.method, h.url+c.path, nil)
		must(t, err)
		for k, v := range c.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || !strings.Contains(string(body), c.names) {
			t.Errorf("%s %s: %d %s, want %d naming %s", c.method, c.path, resp.StatusCode, body, c.status, c.names)
		}
	}
}

// TestWriteFileConditions: created (201) and replaced (200), with the
// new ETag; If-Match with another tag and If-None-Match: * over a file
// are 412; a body over the router's limit is 413 unless it is exempt.
func TestWriteFileConditions(t *testing.T) {
	h := newContractHarness(t)
	for _, c := range []struct {
		path   string
		header map[string]string
		status int
	}{
		{"/missing", nil, 201},
		{"/f", nil, 200},
		{"/f", map[string]string{"If-Match": fakeETag}, 200},
		{"/f", map[string]string{"If-Match": `"other"`}, 412},
		{"/f", map[string]string{"If-None-Match": "*"}, 412},
		{"/missing", map[string]string{"If-None-Match": "*"}, 201},
	} {
		header := map[string]string{"Content-Type": "application/octet-stream"}
		maps.Copy(header, c.header)
		resp, body := fileRequest(t, h, "PUT", "/v1/sandboxes/box/files?path="+c.path, strings.NewReader("data"), header)
		if resp.StatusCode != c.status {
			t.Errorf("PUT %s %v: %d %s, want %d", c.path, c.header, resp.StatusCode, body, c.status)
		}
		if c.status < 300 && resp.Header.Get("ETag") != fakeETag {
			t.Errorf("PUT %s: ETag %q", c.path, resp.Header.Get("ETag"))
		}
	}
}

// TestFileArchiveHandlers: an archive out is a tar; one in is extracted
// (204); a body that is no tar is a 400 naming it.
func TestFileArchiveHandlers(t *testing.T) {
	h := newContractHarness(t)
	resp, body := fileRequest(t, h, "GET", "/v1/sandboxes/box/files/archive?path=/d", nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-tar" {
		t.Fatalf("GET archive: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	tr := tar.NewReader(bytes.NewReader(body))
	if hdr, err := tr.Next(); err != nil || hdr.Name != "a" {
		t.Fatalf("archive's first entry: %v, %v", hdr, err)
	}
	resp, _ = fileRequest(t, h, "PUT", "/v1/sandboxes/box/files/archive?path=/d", bytes.NewReader(body), map[string]string{"Content-Type": "application/x-tar"})
	if resp.StatusCode != 204 {
		t.Errorf("PUT archive: %d", resp.StatusCode)
	}
	resp, data := fileRequest(t, h, "PUT", "/v1/sandboxes/box/files/archive?path=/d", strings.NewReader(strings.Repeat("x", 1024)), map[string]string{"Content-Type": "application/x-tar"})
	if resp.StatusCode != 400 || !strings.Contains(string(data), "body") {
		t.Errorf("PUT a body that is no tar: %d %s", resp.StatusCode, data)
	}
	resp, data = fileRequest(t, h, "GET", "/v1/sandboxes/box/files/archive?path=/missing", nil, nil)
	if resp.StatusCode != 404 || !strings.Contains(string(data), `"code":404`) {
		t.Errorf("GET archive of nothing: %d %s", resp.StatusCode, data)
	}
}

// TestFilesListStatMkdir: the JSON forms, as the contract has them.
func TestFilesListStatMkdir(t *testing.T) {
	h := newContractHarness(t)
	resp, body := fileRequest(t, h, "GET", "/v1/sandboxes/box/files/list?path=/d&depth=1", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"link_target":"/etc"`) || !strings.Contains(string(body), `"truncated":true`) {
		t.Errorf("list: %d %s", resp.StatusCode, body)
	}
	resp, body = fileRequest(t, h, "GET", "/v1/sandboxes/box/files/stat?path=/f", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"mode":"0644"`) || !strings.Contains(string(body), `"modified_at":100`) {
		t.Errorf("stat: %d %s", resp.StatusCode, body)
	}
	resp, body = fileRequest(t, h, "POST", "/v1/sandboxes/box/files/mkdir?path=/missing&parents=true&mode=0700&uid=5", nil, nil)
	if resp.StatusCode != 201 {
		t.Errorf("mkdir: %d %s", resp.StatusCode, body)
	}
	resp, body = fileRequest(t, h, "DELETE", "/v1/sandboxes/box/files?path=/missing", nil, nil)
	if resp.StatusCode != 404 {
		t.Errorf("delete of nothing: %d %s", resp.StatusCode, body)
	}
}
