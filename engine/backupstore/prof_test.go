//go:build prof

package backupstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/stretchr/testify/require"
)

func TestProfRestore(t *testing.T) {
	srv := testutil.StartS3(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	writeDataset(t, img, os.Getenv("KIND"), 512<<20)
	o := Options{Key: benchKey}
	o.Endpoint, o.AccessKeyID, o.SecretAccessKey = srv.Endpoint, srv.AccessKey, srv.SecretKey
	ctx := context.Background()
	s, err := Open(ctx, srv.URL("p"), o)
	require.NoError(t, err)
	src, _ := OpenFileSource(img)
	start := time.Now()
	_, err = s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: src})
	require.NoError(t, err)
	t.Logf("backup %v", time.Since(start))
	for _, c := range []int{16, 16, 16} {
		o.Concurrency = c
		s, err := Open(ctx, srv.URL("p"), o)
		require.NoError(t, err)
		os.Remove(filepath.Join(dir, "r.img"))
		sink, _, _ := CreateFileSink(filepath.Join(dir, "r.img"), src.Size())
		start = time.Now()
		_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: sink, SinkZeroed: true})
		require.NoError(t, err)
		r := time.Since(start)
		start = time.Now()
		sink.Sync()
		t.Logf("conc %d restore %v sync %v", c, r, time.Since(start))
		sink.Close()
	}
}
