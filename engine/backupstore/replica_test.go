package backupstore

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/cairnstore/cairn/replica"
	"github.com/stretchr/testify/require"
)

func readReplica(t *testing.T, dir string) []byte {
	r, err := replica.Open(dir)
	require.NoError(t, err)
	defer r.Close()
	b := make([]byte, r.Size())
	_, err = r.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}

// TestReplicaBackupRestore: backups from replica snapshots read only the
// replica diff; a purged base snapshot falls back to hashing; restores
// produce a new replica, and an incremental restore updates one in place.
func TestReplicaBackupRestore(t *testing.T) {
	tt := newFileTarget(t)
	ctx := ctxT(t)
	s := tt.open(t)
	dir := filepath.Join(t.TempDir(), "r")
	r, err := replica.Create(dir, testSize)
	require.NoError(t, err)
	defer r.Close()

	img := newMemImage(testSize)
	fillMixed(img, 71)
	// Write only the non-zero blocks, so the replica is sparse.
	for off := 0; off < testSize; off += testBlockSize {
		if blk := img.b[off : off+testBlockSize]; !isZero(blk) {
			_, err := r.WriteAt(blk, int64(off))
			require.NoError(t, err)
		}
	}
	require.NoError(t, r.Snapshot("s1", nil))
	b1, err := s.BackupReplica(ctx, r, ReplicaBackupOptions{Volume: "vol", Snapshot: "s1", BlockSize: testBlockSize})
	require.NoError(t, err)
	require.Less(t, b1.ReadBytes, int64(testSize), "first backup reads only allocated extents")
	v1 := bytes.Clone(img.b)

	// Change a little; the next backup reads only the diff.
	for _, e := range mutate(img, 72, 4) {
		_, err := r.WriteAt(img.b[e.Offset:e.Offset+e.Length], e.Offset)
		require.NoError(t, err)
	}
	require.NoError(t, r.Snapshot("s2", nil))
	b2, err := s.BackupReplica(ctx, r, ReplicaBackupOptions{Volume: "vol", Snapshot: "s2", BlockSize: testBlockSize})
	require.NoError(t, err)
	require.Equal(t, b1.ID, b2.Parent)
	require.LessOrEqual(t, b2.ReadBytes, int64(8*testBlockSize))
	v2 := bytes.Clone(img.b)

	// Purge s2; the next backup hashes but uploads only what changed.
	for _, e := range mutate(img, 73, 2) {
		_, err := r.WriteAt(img.b[e.Offset:e.Offset+e.Length], e.Offset)
		require.NoError(t, err)
	}
	require.NoError(t, r.Snapshot("s3", nil))
	require.NoError(t, r.RemoveSnapshot("s2"))
	b3, err := s.BackupReplica(ctx, r, ReplicaBackupOptions{Volume: "vol", Snapshot: "s3", BlockSize: testBlockSize})
	require.NoError(t, err)
	require.Equal(t, int64(testSize), b3.ReadBytes, "fallback reads and hashes")
	require.LessOrEqual(t, b3.NewBlocks, 4, "fallback does not re-upload")
	v3 := bytes.Clone(img.b)

	// Full restore into a new replica, then incremental restores in place.
	rdir := filepath.Join(t.TempDir(), "restored")
	_, err = s.RestoreReplica(ctx, rdir, "vol", b1.ID, "", nil)
	require.NoError(t, err)
	require.True(t, bytes.Equal(v1, readReplica(t, rdir)))
	res, err := s.RestoreReplica(ctx, rdir, "vol", b2.ID, b1.ID, nil)
	require.NoError(t, err)
	require.True(t, res.Incremental)
	require.LessOrEqual(t, res.BlocksWritten, 8)
	require.True(t, bytes.Equal(v2, readReplica(t, rdir)))
	_, err = s.RestoreReplica(ctx, rdir, "vol", b3.ID, b2.ID, nil)
	require.NoError(t, err)
	require.True(t, bytes.Equal(v3, readReplica(t, rdir)))
}
