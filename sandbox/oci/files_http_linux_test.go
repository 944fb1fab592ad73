package oci

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
)

// TestFilesHTTPConditional drives a real sandbox's file through the
// agent's router: an upload, ranges of it read back, the ETag the upload
// answered honoured by If-None-Match and If-Range, and compare-and-swap
// writes with If-Match and If-None-Match: *. The bytes are checked in the
// sandbox too.
func TestFilesHTTPConditional(t *testing.T) {
	e := newFilesEnv(t, "crun")
	c, base := filesServer(t, e)
	data := make([]byte, 3<<20+17)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(data)

	call := func(method, url string, body []byte, header map[string]string) (*http.Response, []byte) {
		t.Helper()
		var r io.Reader
		if body != nil {
			r = bytes.NewReader(body)
		}
		req, err := http.NewRequest(method, url, r)
		must(t, err)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		must(t, err)
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		must(t, err)
		return resp, got
	}

	resp, body := call("PUT", base+"?path=/data.bin", data, nil)
	tag := resp.Header.Get("ETag")
	if resp.StatusCode != http.StatusCreated || tag == "" {
		t.Fatalf("upload: %d %s, ETag %q", resp.StatusCode, body, tag)
	}
	sum := sha256.Sum256(data)
	if got := e.sh(e.id, "sha256sum /data.bin"); !strings.HasPrefix(got, hex.EncodeToString(sum[:])) {
		t.Fatalf("in the sandbox: %q, want %x", got, sum)
	}

	size := int64(len(data))
	for _, tc := range []struct {
		rng          string
		from, to     int64 // the bytes wanted, [from, to)
		contentRange string
	}{
		{"bytes=1000000-1999999", 1000000, 2000000, "bytes 1000000-1999999/3145745"},
		{"bytes=-17", size - 17, size, "bytes 3145728-3145744/3145745"},
		{"bytes=3145700-", 3145700, size, "bytes 3145700-3145744/3145745"},
		{"bytes=0-0", 0, 1, "bytes 0-0/3145745"},
	} {
		resp, got := call("GET", base+"?path=/data.bin", nil, map[string]string{"Range": tc.rng})
		if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != tc.contentRange ||
			resp.Header.Get("ETag") != tag || !bytes.Equal(got, data[tc.from:tc.to]) {
			t.Errorf("Range %s: %d, Content-Range %q, ETag %q, %d bytes (equal: %v)", tc.rng, resp.StatusCode,
				resp.Header.Get("Content-Range"), resp.Header.Get("ETag"), len(got), bytes.Equal(got, data[tc.from:tc.to]))
		}
	}
	if resp, got := call("GET", base+"?path=/data.bin", nil, map[string]string{"Range": "bytes=3145745-"}); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable ||
		resp.Header.Get("Content-Range") != "bytes */3145745" || !bytes.Contains(got, []byte(`header \"Range\"`)) {
		t.Errorf("a range past the end: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Range"), got)
	}
	if resp, got := call("GET", base+"?path=/data.bin", nil, map[string]string{"If-None-Match": tag}); resp.StatusCode != http.StatusNotModified || len(got) != 0 {
		t.Errorf("If-None-Match with its tag: %d, %d bytes; want 304", resp.StatusCode, len(got))
	}
	if resp, got := call("GET", base+"?path=/data.bin", nil, map[string]string{"Range": "bytes=0-9", "If-Range": `"0-0-0-0"`}); resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
		t.Errorf("If-Range with another tag: %d, %d bytes; want 200 and the whole file", resp.StatusCode, len(got))
	}

	// Compare and swap: the tag it was read with wins once.
	resp, body = call("PUT", base+"?path=/data.bin", []byte("second"), map[string]string{"If-Match": tag})
	tag2 := resp.Header.Get("ETag")
	if resp.StatusCode != http.StatusOK || tag2 == "" || tag2 == tag {
		t.Fatalf("If-Match with the current tag: %d %s, ETag %q (was %q)", resp.StatusCode, body, tag2, tag)
	}
	resp, body = call("PUT", base+"?path=/data.bin", []byte("lost"), map[string]string{"If-Match": tag})
	if resp.StatusCode != http.StatusPreconditionFailed || !bytes.Contains(body, []byte(`\"/data.bin\" has changed`)) {
		t.Errorf("If-Match with the old tag: %d %s; want 412 naming the file", resp.StatusCode, body)
	}
	resp, body = call("PUT", base+"?path=/data.bin", []byte("lost"), map[string]string{"If-None-Match": "*"})
	if resp.StatusCode != http.StatusPreconditionFailed || !bytes.Contains(body, []byte(`If-None-Match`)) {
		t.Errorf("If-None-Match: * over a file: %d %s; want 412", resp.StatusCode, body)
	}
	if got := e.sh(e.id, "cat /data.bin"); got != "second" {
		t.Errorf("after the refused writes the sandbox sees %q, want \"second\"", got)
	}
	if resp, got := call("GET", base+"?path=/data.bin", nil, map[string]string{"If-None-Match": tag}); resp.StatusCode != http.StatusOK || string(got) != "second" || resp.Header.Get("ETag") != tag2 {
		t.Errorf("If-None-Match with the old tag: %d %q ETag %q; want 200 with the new file and tag", resp.StatusCode, got, resp.Header.Get("ETag"))
	}
}
