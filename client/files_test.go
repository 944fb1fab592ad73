package client_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/arcbox/arcbox-agent/client"
)

// pattern is a reader of size pseudo-random bytes that makes them as it
// is read. Once it has made hold bytes it waits for proceed: a client
// that held the whole body before sending it would wait forever.
type pattern struct {
	rng     *rand.ChaCha8
	left    int64
	made    int64
	hold    int64
	proceed <-chan struct{}
}

func newPattern(size, hold int64, proceed <-chan struct{}) *pattern {
	return &pattern{rng: rand.NewChaCha8([32]byte{7}), left: size, hold: hold, proceed: proceed}
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if p.made >= p.hold && p.proceed != nil {
		<-p.proceed
		p.proceed = nil
	}
	b = b[:min(int64(len(b)), p.left)]
	n, _ := p.rng.Read(b)
	p.left -= int64(n)
	p.made += int64(n)
	return n, nil
}

// TestWriteFileStreams: a 64 MiB body is sent as it is read (the server
// reads its first MiB before the client has made 8), whole (its hash),
// with the options as the agent takes them.
func TestWriteFileStreams(t *testing.T) {
	const size, hold = 64 << 20, 8 << 20
	received := make(chan struct{})
	var query, header, sum string
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query, header = r.URL.Query().Encode(), r.Header.Get("Content-Type")+" "+r.Header.Get("If-Match")
		h := sha256.New()
		if _, err := io.CopyN(h, r.Body, 1<<20); err != nil {
			t.Error(err)
		}
		close(received)
		if _, err := io.Copy(h, r.Body); err != nil {
			t.Error(err)
		}
		sum = fmt.Sprintf("%x", h.Sum(nil))
		w.Header().Set("ETag", `"1-2"`)
		writeJSON(w, http.StatusCreated, `{"path":"/big","type":"file","size":1,"mode":"0644","uid":0,"gid":0,"modified_at":1}`)
	}))
	uid, gid := 0, 1000
	etag, created, err := c.WriteFile(testCtx(t), "box", "/big", newPattern(size, hold, received), client.WriteFileOptions{
		Mode: 0o755 | fs.ModeSetuid, UID: &uid, GID: &gid, IfMatch: `"0-1"`,
	})
	if err != nil || etag != `"1-2"` || !created {
		t.Fatalf("write: %q %v %v", etag, created, err)
	}
	want := sha256.New()
	if _, err := io.Copy(want, newPattern(size, 0, nil)); err != nil {
		t.Fatal(err)
	}
	if sum != fmt.Sprintf("%x", want.Sum(nil)) {
		t.Error("the server got other bytes than the reader made")
	}
	if query != "gid=1000&mode=4755&path=%2Fbig&uid=0" || header != `application/octet-stream "0-1"` {
		t.Errorf("query %q, headers %q", query, header)
	}
	if _, _, err := c.WriteFile(testCtx(t), "box", "/x", strings.NewReader(""), client.WriteFileOptions{Mode: fs.ModeDir | 0o755}); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("a directory's mode: %v", err)
	}
}

func writeJSON(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, body)
}

// TestWriteFileConditions: If-Match and create-only refusals are 412
// *Errors; a replace is not created.
func TestWriteFileConditions(t *testing.T) {
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch {
		case r.Header.Get("If-None-Match") == "*":
			writeError(w, http.StatusPreconditionFailed, "/f exists")
		case r.Header.Get("If-Match") == `"old"`:
			writeError(w, http.StatusPreconditionFailed, "/f has another tag")
		default:
			w.Header().Set("ETag", `"3-4"`)
			writeJSON(w, http.StatusOK, `{"path":"/f","type":"file","size":1,"mode":"0644","uid":0,"gid":0,"modified_at":1}`)
		}
	}))
	ctx := testCtx(t)
	var e *client.Error
	if _, _, err := c.WriteFile(ctx, "box", "/f", strings.NewReader("x"), client.WriteFileOptions{CreateOnly: true}); !errors.As(err, &e) || e.Code != 412 || e.Message != "/f exists" {
		t.Errorf("create-only: %v", err)
	}
	if _, _, err := c.WriteFile(ctx, "box", "/f", strings.NewReader("x"), client.WriteFileOptions{IfMatch: `"old"`}); !errors.As(err, &e) || e.Code != 412 {
		t.Errorf("if-match: %v", err)
	}
	if etag, created, err := c.WriteFile(ctx, "box", "/f", strings.NewReader("x"), client.WriteFileOptions{}); err != nil || created || etag != `"3-4"` {
		t.Errorf("replace: %q %v %v", etag, created, err)
	}
}

// TestReadFile: the whole file, a range, and the 304 and 416 as *Errors.
func TestReadFile(t *testing.T) {
	content := []byte("0123456789")
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("path") != "/f" {
			writeError(w, http.StatusNotFound, "no "+r.URL.Query().Get("path"))
			return
		}
		w.Header().Set("ETag", `"5-6"`)
		w.Header().Set("Last-Modified", "Mon, 01 Dec 2025 10:00:00 GMT")
		switch rg := r.Header.Get("Range"); {
		case r.Header.Get("If-None-Match") == `"5-6"`:
			w.WriteHeader(http.StatusNotModified)
		case rg == "bytes=20-":
			w.Header().Set("Content-Range", "bytes */10")
			writeError(w, http.StatusRequestedRangeNotSatisfiable, "past the end")
		case rg == "bytes=2-4":
			w.Header().Set("Content-Range", "bytes 2-4/10")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(content[2:5])
		default:
			_, _ = w.Write(content)
		}
	}))
	ctx := testCtx(t)
	read := func(o client.ReadFileOptions) (*client.FileReader, string, error) {
		f, err := c.ReadFile(ctx, "box", "/f", o)
		if err != nil {
			return nil, "", err
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		return f, string(b), err
	}
	f, body, err := read(client.ReadFileOptions{})
	if err != nil || body != "0123456789" || f.ETag != `"5-6"` || f.Size != 10 || f.Partial || f.ModTime.Day() != 1 {
		t.Errorf("whole: %+v %q %v", f, body, err)
	}
	f, body, err = read(client.ReadFileOptions{Range: "bytes=2-4"})
	if err != nil || body != "234" || !f.Partial || f.Offset != 2 || f.Length != 3 || f.Size != 10 {
		t.Errorf("range: %+v %q %v", f, body, err)
	}
	var e *client.Error
	if _, _, err := read(client.ReadFileOptions{IfNoneMatch: `"5-6"`}); !errors.As(err, &e) || e.Code != 304 {
		t.Errorf("not modified: %v", err)
	}
	if _, _, err := read(client.ReadFileOptions{Range: "bytes=20-"}); !errors.As(err, &e) || e.Code != 416 {
		t.Errorf("past the end: %v", err)
	}
	if _, err := c.ReadFile(ctx, "box", "/g", client.ReadFileOptions{}); !errors.As(err, &e) || e.Code != 404 || e.Message != "no /g" {
		t.Errorf("missing: %v", err)
	}
}

// TestFileOperations: stat, list, mkdir, remove and archives send what
// the agent takes and read what it answers.
func TestFileOperations(t *testing.T) {
	var mu sync.Mutex
	var got []string
	var archive []byte
	info := `{"path":"/d","type":"dir","size":0,"mode":"0755","uid":0,"gid":0,"modified_at":1}`
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+"?"+r.URL.Query().Encode()+" "+r.Header.Get("Content-Type"))
		mu.Unlock()
		switch r.URL.Path {
		case "/v1/sandboxes/box/files/stat":
			writeJSON(w, http.StatusOK, info)
		case "/v1/sandboxes/box/files/list":
			writeJSON(w, http.StatusOK, `{"entries":[`+info+`],"truncated":true}`)
		case "/v1/sandboxes/box/files/mkdir":
			writeJSON(w, http.StatusCreated, info)
		case "/v1/sandboxes/box/files/archive":
			if r.Method == http.MethodPut {
				archive = body
				w.WriteHeader(http.StatusNoContent)
				return
			}
			w.Header().Set("Content-Type", "application/x-tar")
			_, _ = w.Write(archive)
		default:
			if r.URL.Query().Get("recursive") == "" {
				writeError(w, http.StatusConflict, "/d is not empty")
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	ctx := testCtx(t)
	if fi, err := c.StatFile(ctx, "box", "/d"); err != nil || fi.Type != "dir" {
		t.Errorf("stat: %+v %v", fi, err)
	}
	if l, err := c.ListFiles(ctx, "box", "/d", 3); err != nil || len(l.Entries) != 1 || !l.Truncated {
		t.Errorf("list: %+v %v", l, err)
	}
	if fi, err := c.Mkdir(ctx, "box", "/d", true, 0o700|fs.ModeSticky); err != nil || fi.Path != "/d" {
		t.Errorf("mkdir: %+v %v", fi, err)
	}
	var e *client.Error
	if err := c.RemoveFile(ctx, "box", "/d", false); !errors.As(err, &e) || e.Code != 409 {
		t.Errorf("remove: %v", err)
	}
	if err := c.RemoveFile(ctx, "box", "/d", true); err != nil {
		t.Errorf("remove recursive: %v", err)
	}
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	_ = tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o644, Size: 2})
	_, _ = tw.Write([]byte("hi"))
	_ = tw.Close()
	if err := c.PutArchive(ctx, "box", "/d", bytes.NewReader(tarball.Bytes())); err != nil {
		t.Fatal(err)
	}
	rc, err := c.GetArchive(ctx, "box", "/d")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if h, err := tr.Next(); err != nil || h.Name != "a" {
		t.Errorf("archive: %+v %v", h, err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		"GET /v1/sandboxes/box/files/stat?path=%2Fd ",
		"GET /v1/sandboxes/box/files/list?depth=3&path=%2Fd ",
		"POST /v1/sandboxes/box/files/mkdir?mode=1700&parents=true&path=%2Fd ",
		"DELETE /v1/sandboxes/box/files?path=%2Fd ",
		"DELETE /v1/sandboxes/box/files?path=%2Fd&recursive=true ",
		"PUT /v1/sandboxes/box/files/archive?path=%2Fd application/x-tar",
		"GET /v1/sandboxes/box/files/archive?path=%2Fd ",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the agent got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
