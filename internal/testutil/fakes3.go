package testutil

import (
	"encoding/xml"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FakeS3 is a minimal path-style S3 server over a directory laid out like
// a file:// backup target (Dir/<key>), for tests that need a server that
// misbehaves: Hook sees every object request first and may answer it
// itself (trickle bytes, lie about Content-Length). It answers HeadBucket,
// ListObjectsV2 and Get/Head/Put/DeleteObject, and checks no signature.
type FakeS3 struct {
	Endpoint string // http://127.0.0.1:PORT
	Bucket   string
	Dir      string
	// Hook, if set, is called for each object request with the object key
	// (without the bucket); returning true means it wrote the response.
	Hook func(w http.ResponseWriter, r *http.Request, key string) bool
}

// StartFakeS3 serves dir as bucket "bkt" until the test ends.
func StartFakeS3(t testing.TB, dir string) *FakeS3 {
	f := &FakeS3{Bucket: "bkt", Dir: dir}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	f.Endpoint = srv.URL
	return f
}

func (f *FakeS3) serve(w http.ResponseWriter, r *http.Request) {
	bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if bucket != f.Bucket {
		s3Error(w, http.StatusNotFound, "NoSuchBucket")
		return
	}
	if key == "" {
		if r.Method == http.MethodGet {
			f.list(w, r.URL.Query().Get("prefix"))
		}
		return // HeadBucket: 200
	}
	if f.Hook != nil && f.Hook(w, r, key) {
		return
	}
	p := filepath.Join(f.Dir, filepath.FromSlash(key))
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		b, err := os.ReadFile(p)
		if err != nil {
			s3Error(w, http.StatusNotFound, "NoSuchKey")
			return
		}
		b, status := byteRange(w, r, b)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(status)
		if r.Method == http.MethodGet {
			_, _ = w.Write(b)
		}
	case http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		_ = os.MkdirAll(filepath.Dir(p), 0o700)
		_ = os.WriteFile(p, b, 0o600)
	case http.MethodDelete:
		_ = os.Remove(p)
		w.WriteHeader(http.StatusNoContent)
	}
}

// list answers ListObjectsV2 with every file under prefix, untruncated.
func (f *FakeS3) list(w http.ResponseWriter, prefix string) {
	type content struct {
		Key          string
		Size         int64
		LastModified string
	}
	res := struct {
		XMLName     xml.Name `xml:"ListBucketResult"`
		Name        string
		Prefix      string
		KeyCount    int
		MaxKeys     int
		IsTruncated bool
		Contents    []content
	}{Name: f.Bucket, Prefix: prefix, MaxKeys: 1000}
	_ = filepath.WalkDir(f.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(f.Dir, p)
		key := filepath.ToSlash(rel)
		if info, err := d.Info(); err == nil && strings.HasPrefix(key, prefix) {
			res.Contents = append(res.Contents, content{Key: key, Size: info.Size(),
				LastModified: info.ModTime().UTC().Format(time.RFC3339)})
		}
		return nil
	})
	res.KeyCount = len(res.Contents)
	w.Header().Set("Content-Type", "application/xml")
	_ = xml.NewEncoder(w).Encode(res)
}

func s3Error(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, "<Error><Code>"+code+"</Code><Message>"+code+"</Message></Error>")
}

// byteRange answers a "Range: bytes=FIRST-LAST" request header (the only
// form S3 clients send here): the part of b it names and 206, with
// Content-Range set; without the header, all of b and 200.
func byteRange(w http.ResponseWriter, r *http.Request, b []byte) ([]byte, int) {
	spec, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok {
		return b, http.StatusOK
	}
	first, last, _ := strings.Cut(spec, "-")
	from, err1 := strconv.Atoi(first)
	to, err2 := strconv.Atoi(last)
	if err1 != nil || err2 != nil || from > to || from >= len(b) {
		return b, http.StatusOK
	}
	to = min(to, len(b)-1)
	w.Header().Set("Content-Range", "bytes "+first+"-"+strconv.Itoa(to)+"/"+strconv.Itoa(len(b)))
	return b[from : to+1], http.StatusPartialContent
}

// Trickle answers a GET (honouring a Range header) with the real
// Content-Length and then sends one byte per interval until the client
// gives up.
func Trickle(w http.ResponseWriter, r *http.Request, path string, interval time.Duration) {
	b, err := os.ReadFile(path)
	if err != nil {
		s3Error(w, http.StatusNotFound, "NoSuchKey")
		return
	}
	b, status := byteRange(w, r, b)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	rc := http.NewResponseController(w)
	for _, c := range b {
		if _, err := w.Write([]byte{c}); err != nil {
			return
		}
		if errors.Is(rc.Flush(), http.ErrNotSupported) {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(interval):
		}
	}
}
