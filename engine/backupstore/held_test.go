package backupstore

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/replica"
)

// TestApplyReplicaHeld: a standby replica follows backups through the
// blocks it records as held: each apply writes only the blocks that
// changed, also after the backup it holds was deleted from the target; an
// apply interrupted half-way leaves the differing blocks unknown, and the
// next apply (of another backup) rewrites them, so the replica ends equal
// to that backup. The record survives encoding and rejects corruption.
func TestApplyReplicaHeld(t *testing.T) {
	ctx := ctxT(t)
	s := newFileTarget(t).open(t)
	img := newMemImage(testSize)
	fillMixed(img, 11)
	backup := func() (BackupInfo, []byte) {
		info, err := s.CreateBackup(ctx, BackupOptions{Volume: "vol", Source: img, BlockSize: testBlockSize})
		require.NoError(t, err)
		return info, bytes.Clone(img.b)
	}
	b1, v1 := backup()
	dir := filepath.Join(t.TempDir(), "standby")
	_, err := s.RestoreReplica(ctx, dir, "vol", b1.ID, "", nil)
	require.NoError(t, err)
	require.Equal(t, v1, readReplica(t, dir))
	m1, err := s.ReadManifest(ctx, "vol", b1.ID)
	require.NoError(t, err)
	held := HeldOf(m1)

	mutate(img, 12, 2)
	b2, v2 := backup()
	_, err = s.Delete(ctx, "vol", b1.ID)
	require.NoError(t, err)
	var started *Held
	res, held2, err := s.ApplyReplica(ctx, ApplyOptions{Dir: dir, Volume: "vol", Backup: b2.ID, Held: held,
		Started: func(h *Held) error { started = h; return nil }})
	require.NoError(t, err)
	require.True(t, res.Incremental)
	require.LessOrEqual(t, res.BlocksWritten+res.BlocksZeroed, 2, "only the changed blocks are written")
	require.Equal(t, v2, readReplica(t, dir))
	require.Equal(t, b2.ID, held2.Backup)
	require.Empty(t, started.Backup, "a replica between two backups holds neither")

	// An apply of b3 that fails after writing (simulated by writing b3's
	// changes by hand) leaves the record `started`; applying b4 from it
	// must rewrite those blocks too.
	mutate(img, 13, 3)
	b3, v3 := backup()
	var mid *Held
	_, _, err = s.ApplyReplica(ctx, ApplyOptions{Dir: dir, Volume: "vol", Backup: b3.ID, Held: held2,
		Started: func(h *Held) error { mid = h; return errors.New("crash") }})
	require.Error(t, err)
	r, err := replica.Open(dir)
	require.NoError(t, err)
	_, err = r.WriteAt(v3, 0)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	copy(img.b, v2) // b4 goes back to b2's content: only the unknown blocks differ
	b4, v4 := backup()
	enc, err := mid.MarshalBinary()
	require.NoError(t, err)
	var dec Held
	require.NoError(t, dec.UnmarshalBinary(enc))
	res, _, err = s.ApplyReplica(ctx, ApplyOptions{Dir: dir, Volume: "vol", Backup: b4.ID, Held: &dec})
	require.NoError(t, err)
	require.Positive(t, res.BlocksWritten+res.BlocksZeroed)
	require.Equal(t, v4, readReplica(t, dir))

	enc[len(enc)/2] ^= 1
	require.ErrorIs(t, dec.UnmarshalBinary(enc), ErrCorrupt)
}
