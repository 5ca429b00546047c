package backupstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// randomImage is n blocks of incompressible data.
func randomImage(n int, seed uint64) *memImage {
	img := newMemImage(n * testBlockSize)
	fillRandom(rand.New(rand.NewPCG(seed, 3)), img.b)
	return img
}

// TestRepack: deleting a backup deletes the packs that held only its
// blocks, repacks the packs that were mostly its blocks (copying the
// referenced records into new packs) and keeps the packs at least half
// referenced; what stays restores byte-exact and GC finds nothing left.
func TestRepack(t *testing.T) {
	tt := newFileTarget(t)
	// One worker: records are packed in volume order, four 64 KiB
	// incompressible blocks per 256 KiB pack, so pack k holds blocks
	// 4k..4k+3.
	s := tt.open(t, func(o *Options) { o.Concurrency = 1 })
	ctx := ctxT(t)
	none := CompressionNone
	img := randomImage(64, 1)
	b1, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize, Compression: &none})
	require.NoError(t, err)
	require.Len(t, keysUnder(t, s, "packs/"), 16)

	// Blocks 0..31: one of four kept (packs 0..7 become 25% referenced);
	// 32..47 kept (packs 8..11 fully referenced); 48..63 all new (packs
	// 12..15 unreferenced once b1 is gone).
	fresh := randomImage(64, 2)
	for i := 0; i < 64; i++ {
		if (i < 32 && i%4 != 0) || i >= 48 {
			copy(img.b[i*testBlockSize:(i+1)*testBlockSize], fresh.b[i*testBlockSize:])
		}
	}
	b2, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize, Compression: &none})
	require.NoError(t, err)
	require.Equal(t, 40, b2.NewBlocks)

	// A read-only reader (no lock) has read the index when the delete
	// repacks and removes packs under it: it reads the index again and
	// restores b2 all the same.
	var d DeleteResult
	var once sync.Once
	ro, err := OpenStore(ctx, &hookTarget{Target: s.t, before: func() {
		once.Do(func() { d, err = s.Delete(ctx, "v", b1.ID) })
	}}, func() Options { o := tt.opts; o.ReadOnly, o.Concurrency = true, 1; return o }())
	require.NoError(t, err)
	roSink := newMemImage(len(img.b))
	_, rerr := ro.Restore(ctx, RestoreOptions{Volume: "v", Backup: b2.ID, Sink: roSink, SinkZeroed: true})
	require.NoError(t, err)
	require.NoError(t, rerr)
	require.True(t, bytes.Equal(img.b, roSink.b))
	require.Equal(t, 4, d.PacksDeleted)
	require.Equal(t, 8, d.PacksRepacked)
	require.Equal(t, 8*3+16, d.BlocksDeleted)

	// b2's 64 distinct blocks remain: its own 40 in 10 packs, the 8
	// repacked ones in 2 new packs, and the 16 of packs 8..11.
	ix, err := s.loadIndex(ctx)
	require.NoError(t, err)
	require.Len(t, ix.blocks, 64)
	require.Len(t, ix.packs, 10+2+4)
	require.Len(t, keysUnder(t, s, "packs/"), len(ix.packs), "no pack left behind")
	sink := newMemImage(len(img.b))
	_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: sink, SinkZeroed: true})
	require.NoError(t, err)
	require.True(t, bytes.Equal(img.b, sink.b))
	_, err = s.Verify(ctx, VerifyOptions{})
	require.NoError(t, err)
	g, err := s.GC(ctx, GCOptions{DryRun: true})
	require.NoError(t, err)
	require.Zero(t, g.UnreferencedBlocks+g.PacksDeleted+g.PacksRepacked+g.UnindexedPacks)
}

// hookTarget calls before ahead of every range read.
type hookTarget struct {
	Target
	before func()
}

func (h *hookTarget) GetRange(ctx context.Context, key string, off, n int64, buf []byte) ([]byte, error) {
	h.before()
	return getRange(ctx, h.Target, key, off, n, buf)
}

// TestGCWaitsForBackup: GC cannot take the block set while a backup holds
// it (ErrLocked after LockWait); once the backup is committed GC keeps
// every block it uses, also those it found in the index and skipped.
func TestGCWaitsForBackup(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tt testTarget) {
		ctx := ctxT(t)
		s := tt.open(t, func(o *Options) { o.LockWait = 500 * time.Millisecond })
		img := newMemImage(testSize)
		fillMixed(img, 7)
		_, err := s.CreateBackup(ctx, BackupOptions{Volume: "other", Source: img.clone(), BlockSize: testBlockSize})
		require.NoError(t, err)
		mutate(img, 8, 6)
		reached, release := make(chan struct{}), make(chan struct{})
		var reads atomic.Int32
		slow := img.clone()
		slow.hold = func() {
			if reads.Add(1) == 20 {
				close(reached)
			}
			if reads.Load() >= 20 {
				<-release
			}
		}
		done := make(chan error, 1)
		var b BackupInfo
		go func() {
			var err error
			b, err = s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: slow, BlockSize: testBlockSize})
			done <- err
		}()
		<-reached
		// The other volume's backup goes: its blocks are what the running
		// backup skips.
		d, err := s.Delete(ctx, "other", mustLatest(t, s, "other"))
		require.NoError(t, err)
		require.True(t, d.Deferred)
		_, err = s.GC(ctx, GCOptions{})
		require.ErrorIs(t, err, ErrLocked)
		close(release)
		require.NoError(t, <-done)
		_, err = s.GC(ctx, GCOptions{})
		require.NoError(t, err)
		sink := newMemImage(testSize)
		_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Backup: b.ID, Sink: sink, SinkZeroed: true})
		require.NoError(t, err)
		require.True(t, bytes.Equal(img.b, sink.b))
		_, err = s.Verify(ctx, VerifyOptions{})
		require.NoError(t, err)
	})
}

func mustLatest(t *testing.T, s *Store, volume string) string {
	b, err := s.Latest(ctxT(t), volume)
	require.NoError(t, err)
	return b.ID
}

// TestLostIndexAdopted: with every index object gone, restores fail with
// ErrMissingBlock (nothing is guessed); GC reads the packs' trailers,
// adopts those holding referenced blocks instead of deleting them, and
// the backup restores again.
func TestLostIndexAdopted(t *testing.T) {
	tt := newFileTarget(t)
	tt.opts.Key = bytes.Repeat([]byte("i"), 32)
	s := tt.open(t)
	ctx := ctxT(t)
	img := newMemImage(testSize)
	fillMixed(img, 9)
	_, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	packs := keysUnder(t, s, "packs/")
	for _, k := range keysUnder(t, s, "index/") {
		require.NoError(t, s.t.Delete(ctx, k))
	}
	_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: newMemImage(testSize), SinkZeroed: true})
	require.ErrorIs(t, err, ErrMissingBlock)
	require.Contains(t, err.Error(), "in no index")

	g, err := s.GC(ctx, GCOptions{})
	require.NoError(t, err)
	require.Equal(t, len(packs), g.AdoptedPacks)
	require.Zero(t, g.UnindexedPacks+g.PacksDeleted)
	require.ElementsMatch(t, packs, keysUnder(t, s, "packs/"))
	sink := newMemImage(testSize)
	_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: sink, SinkZeroed: true})
	require.NoError(t, err)
	require.True(t, bytes.Equal(img.b, sink.b))
}

// TestSwappedObjects: records and index objects are bound to what they
// are: a record copied over another block's record in a pack, or one
// index object's content under another's key, is ErrCorrupt naming it.
func TestSwappedObjects(t *testing.T) {
	for _, enc := range []bool{false, true} {
		tt := newFileTarget(t)
		if enc {
			tt.opts.Key = bytes.Repeat([]byte("s"), 32)
		}
		s := tt.open(t)
		ctx := ctxT(t)
		none := CompressionNone
		img := randomImage(16, 5)
		b, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize, Compression: &none})
		require.NoError(t, err)
		m, err := s.ReadManifest(ctx, "v", b.ID)
		require.NoError(t, err)
		keyA, offA, nA, err := s.BlockLocation(ctx, m.Blocks[0])
		require.NoError(t, err)
		keyB, offB, nB, err := s.BlockLocation(ctx, m.Blocks[1])
		require.NoError(t, err)
		require.Equal(t, nA, nB, "incompressible blocks of one size have records of one size")
		packB, err := s.t.Get(ctx, keyB)
		require.NoError(t, err)
		packA, err := s.t.Get(ctx, keyA)
		require.NoError(t, err)
		copy(packA[offA:offA+nA], packB[offB:offB+nB])
		require.NoError(t, s.t.Put(ctx, keyA, packA))
		_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: newMemImage(len(img.b)), SinkZeroed: true})
		require.ErrorIs(t, err, ErrCorrupt, "enc=%v", enc)
		require.Contains(t, err.Error(), m.Blocks[0].String())
		if !enc {
			continue
		}
		idx := keysUnder(t, s, "index/")
		require.GreaterOrEqual(t, len(idx), 2)
		other, err := s.t.Get(ctx, idx[1])
		require.NoError(t, err)
		require.NoError(t, s.t.Put(ctx, idx[0], other))
		_, err = tt.open(t).Restore(ctx, RestoreOptions{Volume: "v", Sink: newMemImage(len(img.b)), SinkZeroed: true})
		require.ErrorIs(t, err, ErrCorrupt)
		require.Contains(t, err.Error(), idx[0])
	}
}

// TestOldFormatTarget: a target written in format 1 (one object per
// block) is refused at Open with an error that says so.
func TestOldFormatTarget(t *testing.T) {
	tt := newFileTarget(t)
	require.NoError(t, os.MkdirAll(tt.dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(tt.dir, targetConfigKey),
		[]byte(`{"formatVersion":1,"kind":"cairn-backup-target","id":"x","blockIdHash":"blake3"}`), 0o600))
	_, err := Open(ctxT(t), tt.url, tt.opts)
	require.ErrorIs(t, err, ErrFormat)
	require.Contains(t, err.Error(), "format version 1")
	require.Contains(t, err.Error(), "new target")
}

// TestParsePacksLimits: index and trailer payloads are checked before
// anything is allocated from their counts; records must lie inside their
// pack, in order, without overlap.
func TestParsePacksLimits(t *testing.T) {
	id := BlockID{1}
	good := &packInfo{id: packID{2}, size: 1000, entries: []packEntry{{id: id, off: 0, size: 100, plain: 50}, {id: id, off: 100, size: 900, plain: 50}}}
	b := appendPacks(nil, []*packInfo{good})
	got, err := parsePacks("test", b)
	require.NoError(t, err)
	require.Equal(t, good.entries, got[0].entries)

	bad := map[string]*packInfo{
		"overlap":      {id: packID{2}, size: 1000, entries: []packEntry{{id: id, off: 0, size: 100, plain: 1}, {id: id, off: 99, size: 100, plain: 1}}},
		"out of pack":  {id: packID{2}, size: 1000, entries: []packEntry{{id: id, off: 950, size: 100, plain: 1}}},
		"huge record":  {id: packID{2}, size: maxPackSize, entries: []packEntry{{id: id, off: 0, size: maxObject(MaxBlockSize) + 1, plain: 1}}},
		"huge plain":   {id: packID{2}, size: 1000, entries: []packEntry{{id: id, off: 0, size: 100, plain: MaxBlockSize + 1}}},
		"zero id":      {id: packID{2}, size: 1000, entries: []packEntry{{off: 0, size: 100, plain: 1}}},
		"tiny record":  {id: packID{2}, size: 1000, entries: []packEntry{{id: id, off: 0, size: 3, plain: 1}}},
		"out of order": {id: packID{2}, size: 1000, entries: []packEntry{{id: id, off: 500, size: 100, plain: 1}, {id: id, off: 0, size: 100, plain: 1}}},
	}
	for name, p := range bad {
		_, err := parsePacks("test", appendPacks(nil, []*packInfo{p}))
		require.ErrorIs(t, err, ErrCorrupt, name)
	}
	// Counts larger than the bytes that follow could hold.
	for _, b := range [][]byte{{0xff, 0xff, 0xff, 0xff, 0x0f}, append(append([]byte{1}, make([]byte, 16)...), 10, 0xff, 0xff, 0xff, 0x7f)} {
		_, err := parsePacks("test", b)
		require.ErrorIs(t, err, ErrCorrupt)
	}
	_, err = parsePacks("test", append(b, 0))
	require.ErrorIs(t, err, ErrCorrupt, "trailing bytes")
}
