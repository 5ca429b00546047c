package backupstore

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/stretchr/testify/require"
)

// preallocSink is a memImage that records the largest range a restore
// asked it to preallocate.
type preallocSink struct {
	*memImage
	maxPrealloc int64
}

func (p *preallocSink) Preallocate(off, n int64) error {
	p.maxPrealloc = max(p.maxPrealloc, off+n)
	return nil
}

// forge writes a manifest and a catalogue listing it with the given
// geometry, as someone with write access to an unencrypted target can.
func forge(t *testing.T, s *Store, entry BackupInfo, m Manifest) {
	t.Helper()
	ctx := ctxT(t)
	m.FormatVersion, m.Volume, m.Backup, m.BlockIDHash = FormatVersion, "v", entry.ID, s.cfg.BlockIDHash
	if m.Blocks == nil {
		m.Blocks = make([]BlockID, min(m.BlockCount, 4))
		for i := range m.Blocks {
			m.Blocks[i][0] = byte(i + 1)
		}
	}
	entry.Volume = "v"
	require.NoError(t, s.putManifest(ctx, &m))
	require.NoError(t, s.writeCatalogue(ctx, &catalogue{Volume: "v", Backups: []BackupInfo{entry}}))
}

// TestForgedManifest: a manifest or catalogue entry whose fields are out
// of bounds or disagree fails restore, verify and Resolve with an error,
// without panicking, allocating or preallocating from the forged sizes.
func TestForgedManifest(t *testing.T) {
	const id = "b20250101-000000.000-abcdef"
	cases := []struct {
		name  string
		entry BackupInfo
		m     Manifest
		want  error
	}{
		{"block size 2^40", BackupInfo{ID: id, Size: 1 << 40, BlockSize: 1 << 40, Blocks: 1},
			Manifest{Size: 1 << 40, BlockSize: 1 << 40, BlockCount: 1}, ErrCorrupt},
		{"block size 2^62", BackupInfo{ID: id, Size: 1 << 62, BlockSize: 1 << 62, Blocks: 1},
			Manifest{Size: 1 << 62, BlockSize: 1 << 62, BlockCount: 1}, ErrCorrupt},
		{"odd block size", BackupInfo{ID: id, Size: 2 * 4097, BlockSize: 4097, Blocks: 2},
			Manifest{Size: 2 * 4097, BlockSize: 4097, BlockCount: 2}, ErrCorrupt},
		{"size beyond blocks", BackupInfo{ID: id, Size: 1 << 50, BlockSize: 64 << 10, Blocks: 2},
			Manifest{Size: 1 << 50, BlockSize: 64 << 10, BlockCount: 2}, ErrCorrupt},
		{"catalogue size disagrees", BackupInfo{ID: id, Size: 1 << 30, BlockSize: 1 << 20, Blocks: 1024},
			Manifest{Size: 2 << 20, BlockSize: 1 << 20, BlockCount: 2}, ErrInconsistent},
		{"catalogue block size disagrees", BackupInfo{ID: id, Size: 2 << 20, BlockSize: 64 << 10, Blocks: 32},
			Manifest{Size: 2 << 20, BlockSize: 1 << 20, BlockCount: 2}, ErrInconsistent},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newFileTarget(t).open(t)
			forge(t, s, c.entry, c.m)
			ctx := ctxT(t)
			sink := &preallocSink{memImage: newMemImage(0)}
			_, err := s.Restore(ctx, RestoreOptions{Volume: "v", Sink: sink})
			require.ErrorIs(t, err, c.want)
			require.Zero(t, sink.maxPrealloc)
			_, err = s.Verify(ctx, VerifyOptions{Volume: "v"})
			require.Error(t, err)
			_, err = s.Resolve(ctx, "v", "")
			require.Error(t, err)
		})
	}
}

// TestOversizedObjects: objects larger than their kind allows are refused
// before they are read whole: an index object on a file target, and an S3
// response announcing a 1 GiB manifest.
func TestOversizedObjects(t *testing.T) {
	tt := newFileTarget(t)
	s := tt.open(t)
	ctx := ctxT(t)
	img := newMemImage(1 << 20)
	fillMixed(img, 3)
	b, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	require.NotEmpty(t, b.ID)
	// An index object larger than any may be (a sparse file: its size is
	// all the check looks at).
	idx := keysUnder(t, s, "index/")
	require.NotEmpty(t, idx)
	require.NoError(t, os.Truncate(filepath.Join(tt.dir, filepath.FromSlash(idx[0])), maxObject(maxIndexPayload)+1))
	_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: newMemImage(len(img.b)), SinkZeroed: true})
	require.ErrorIs(t, err, ErrObjectTooLarge)
	require.Contains(t, err.Error(), idx[0])
	_, err = s.Verify(ctx, VerifyOptions{Volume: "v"})
	require.ErrorIs(t, err, ErrObjectTooLarge)

	// The same target over S3, from a server claiming a 1 GiB manifest.
	fake := testutil.StartFakeS3(t, tt.dir)
	fake.Bucket = "bkt"
	fake.Hook = func(w http.ResponseWriter, r *http.Request, key string) bool {
		if !strings.HasSuffix(key, ".manifest") || r.Method != http.MethodGet {
			return false
		}
		w.Header().Set("Content-Length", "1073741824")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("CAIR"))
		return true
	}
	o := testOptions()
	o.Endpoint, o.AccessKeyID, o.SecretAccessKey, o.ReadOnly = fake.Endpoint, "k", "s", true
	s3s, err := Open(ctx, "s3://bkt", o)
	require.NoError(t, err)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = s3s.Restore(ctx, RestoreOptions{Volume: "v", Sink: newMemImage(len(img.b)), SinkZeroed: true})
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, ErrObjectTooLarge)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(256<<20), "read a forged length")
}

// TestCatalogueRollback: an encrypted catalogue replaced by an older
// genuine copy is detected (ErrCatalogueRollback naming the volume and the
// hidden backup) by list, restore and the next backup; gc
// --discard-uncommitted is the way out when the cause was an interrupted
// commit.
func TestCatalogueRollback(t *testing.T) {
	tt := newFileTarget(t)
	tt.opts.Key = bytes.Repeat([]byte("k"), 32)
	s := tt.open(t)
	ctx := ctxT(t)
	img := newMemImage(1 << 20)
	fillMixed(img, 5)
	first, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	catPath := filepath.Join(tt.dir, filepath.FromSlash(catalogueKey("v")))
	old, err := os.ReadFile(catPath)
	require.NoError(t, err)
	mutate(img, 6, 3)
	second, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(catPath, old, 0o600)) // the rollback
	_, err = s.List(ctx, "v")
	require.ErrorIs(t, err, ErrCatalogueRollback)
	require.Contains(t, err.Error(), "volume v")
	require.Contains(t, err.Error(), second.ID)
	_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: newMemImage(len(img.b))})
	require.ErrorIs(t, err, ErrCatalogueRollback)
	_, err = s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.ErrorIs(t, err, ErrCatalogueRollback)
	_, err = s.GC(ctx, GCOptions{})
	require.ErrorIs(t, err, ErrCatalogueRollback)

	res, err := s.GC(ctx, GCOptions{DiscardUncommitted: true})
	require.NoError(t, err)
	require.Equal(t, 1, res.UncommittedManifests)
	list, err := s.List(ctx, "v")
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, first.ID, list[0].ID)
}

// TestS3StallTimeout: a server that trickles a pack one byte per second
// fails the restore with ErrStalled after the stall timeout, without any
// overall deadline.
func TestS3StallTimeout(t *testing.T) {
	tt := newFileTarget(t)
	s := tt.open(t)
	img := newMemImage(1 << 20)
	fillMixed(img, 7)
	_, err := s.CreateBackup(ctxT(t), BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	fake := testutil.StartFakeS3(t, tt.dir)
	fake.Hook = func(w http.ResponseWriter, r *http.Request, key string) bool {
		if !strings.HasPrefix(key, "packs/") || r.Method != http.MethodGet {
			return false
		}
		testutil.Trickle(w, r, filepath.Join(tt.dir, filepath.FromSlash(key)), time.Second)
		return true
	}
	o := testOptions()
	o.Endpoint, o.AccessKeyID, o.SecretAccessKey, o.ReadOnly = fake.Endpoint, "k", "s", true
	o.StallTimeout = 300 * time.Millisecond
	s3s, err := Open(context.Background(), "s3://bkt", o)
	require.NoError(t, err)
	start := time.Now()
	_, err = s3s.Restore(context.Background(), RestoreOptions{Volume: "v", Sink: newMemImage(len(img.b)), SinkZeroed: true})
	require.ErrorIs(t, err, ErrStalled)
	require.Less(t, time.Since(start), 10*time.Second)
}
