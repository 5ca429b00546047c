package backupstore

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestRoundTrip: full → modify → incremental (replica diff) → modify →
// incremental (hash fallback) → restore every backup byte-exact, full and
// incremental, on both target kinds.
func TestRoundTrip(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tt testTarget) {
		ctx := ctxT(t)
		s := tt.open(t)
		img := newMemImage(testSize)
		fillMixed(img, 1)
		v1 := img.clone()

		var last Progress
		calls := 0
		b1, err := s.CreateBackup(ctx, BackupOptions{Volume: "pvc-1", Snapshot: "s1", Source: img, BlockSize: testBlockSize,
			Progress: func(p Progress) { last = p; calls++ }})
		require.NoError(t, err)
		require.Equal(t, int64(testSize), last.BytesDone)
		require.Equal(t, last.BytesTotal, last.BytesDone)
		require.Positive(t, calls)
		require.Positive(t, b1.ZeroBlocks, "mixed data has zero blocks")
		require.Equal(t, b1.Blocks, testSize/testBlockSize)
		require.Less(t, b1.NewBytes, int64(testSize), "zeros skipped and text compressed")

		// Incremental from a replica diff: only changed blocks are read.
		ext := mutate(img, 2, 5)
		v2 := img.clone()
		b2, err := s.CreateBackup(ctx, BackupOptions{Volume: "pvc-1", Snapshot: "s2", Source: img, BlockSize: testBlockSize, Changed: ext})
		require.NoError(t, err)
		require.Equal(t, b1.ID, b2.Parent)
		require.LessOrEqual(t, b2.ReadBytes, int64(10*testBlockSize))
		require.LessOrEqual(t, b2.NewBlocks, 10)

		// Incremental without a diff (snapshot purged): hash and compare.
		mutate(img, 3, 3)
		v3 := img.clone()
		b3, err := s.CreateBackup(ctx, BackupOptions{Volume: "pvc-1", Snapshot: "s3", Source: img, BlockSize: testBlockSize})
		require.NoError(t, err)
		require.Equal(t, int64(testSize), b3.ReadBytes)
		require.LessOrEqual(t, b3.NewBlocks, 6, "unchanged blocks are not re-uploaded")

		list, err := s.List(ctx, "pvc-1")
		require.NoError(t, err)
		require.Len(t, list, 3)

		for _, c := range []struct {
			id   string
			want *memImage
		}{{b1.ID, v1}, {b2.ID, v2}, {b3.ID, v3}} {
			sink := newMemImage(testSize)
			res, err := s.Restore(ctx, RestoreOptions{Volume: "pvc-1", Backup: c.id, Sink: sink, SinkZeroed: true})
			require.NoError(t, err)
			require.False(t, res.Incremental)
			require.True(t, bytes.Equal(c.want.b, sink.b), "restore of %s differs", c.id)
		}

		// Incremental restore b1 → b3 onto a sink holding b1 (DR standby).
		sink := v1.clone()
		res, err := s.Restore(ctx, RestoreOptions{Volume: "pvc-1", Backup: b3.ID, Since: b1.ID, Sink: sink})
		require.NoError(t, err)
		require.True(t, res.Incremental)
		require.LessOrEqual(t, res.BlocksWritten+res.BlocksZeroed, 16)
		require.True(t, bytes.Equal(v3.b, sink.b))

		// A dirty (non-zeroed) sink gets zero blocks trimmed on full restore.
		dirty := newMemImage(testSize)
		fillMixed(dirty, 99)
		_, err = s.Restore(ctx, RestoreOptions{Volume: "pvc-1", Sink: dirty})
		require.NoError(t, err)
		require.True(t, bytes.Equal(v3.b, dirty.b))

		rep, err := s.Verify(ctx, VerifyOptions{})
		require.NoError(t, err)
		require.Equal(t, 3, rep.Backups)

		// The layout doc.go promises, and nothing else.
		keys := objectKeys(t, s)
		var packs, indexes, manifests, other []string
		for _, k := range keys {
			switch {
			case strings.HasPrefix(k, "packs/"):
				packs = append(packs, k)
			case strings.HasPrefix(k, "index/"):
				indexes = append(indexes, k)
			case strings.HasPrefix(k, "volumes/pvc-1/backups/") && strings.HasSuffix(k, ".manifest"):
				manifests = append(manifests, k)
			default:
				other = append(other, k)
			}
		}
		sort.Strings(other)
		require.Equal(t, []string{"cairn-target.json", "volumes/pvc-1/catalogue"}, other, "no locks left behind")
		require.Len(t, manifests, 3)
		for _, k := range packs {
			require.Regexp(t, `^packs/([0-9a-f]{2})/[0-9a-f]{32}$`, k)
			require.Equal(t, k[6:8], k[9:11])
		}
		for _, k := range indexes {
			require.Regexp(t, `^index/[0-9a-f]{32}$`, k)
		}
		// Every referenced block is indexed once, in a pack that exists,
		// and the packs hold nothing else.
		ix, err := s.loadIndex(ctx)
		require.NoError(t, err)
		require.Len(t, ix.blocks, rep.Blocks)
		require.Len(t, ix.packs, len(packs))
		var records int
		for _, p := range ix.packs {
			require.Contains(t, packs, packKey(p.id))
			records += len(p.entries)
		}
		require.Equal(t, rep.Blocks, records)
		require.Greater(t, len(packs), 8, "small test packs: the volume spans many")
		require.Less(t, len(packs), rep.Blocks/2, "blocks are packed")

		// Restores read ranges of packs: fewer requests than blocks, and
		// an incremental restore fetches little.
		res, err = s.Restore(ctx, RestoreOptions{Volume: "pvc-1", Backup: b1.ID, Sink: newMemImage(testSize), SinkZeroed: true})
		require.NoError(t, err)
		require.Less(t, res.ObjectsFetched, res.BlocksWritten/2, "adjacent records are fetched together")
		sink = v2.clone()
		res, err = s.Restore(ctx, RestoreOptions{Volume: "pvc-1", Backup: b3.ID, Since: b2.ID, Sink: sink})
		require.NoError(t, err)
		require.LessOrEqual(t, res.BytesFetched, int64(6*testBlockSize+maxRangeGap*6), "incremental restore reads ranges, not whole packs")
		require.True(t, bytes.Equal(v3.b, sink.b))

		if tt.s3 != nil {
			// An independent S3 client sees the same objects.
			aws := testutil.RequireTool(t, "aws")
			cmd := exec.Command(aws, "--endpoint-url", tt.s3.Endpoint, "s3", "ls", "--recursive", "s3://"+tt.s3.Bucket+"/cairn/prod/")
			cmd.Env = tt.s3.Env()
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, string(out))
			var awsKeys []string
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(line)
				awsKeys = append(awsKeys, strings.TrimPrefix(f[len(f)-1], "cairn/prod/"))
			}
			sort.Strings(awsKeys)
			sort.Strings(keys)
			require.Equal(t, keys, awsKeys)
		}
	})
}

// TestCompressionModes round-trips every compression with and without
// encryption, including incompressible data stored raw.
func TestCompressionModes(t *testing.T) {
	tt := newFileTarget(t)
	img := newMemImage(2 << 20)
	fillMixed(img, 5)
	for _, enc := range []bool{false, true} {
		for _, c := range []Compression{CompressionZstd, CompressionLZ4, CompressionNone} {
			tt := tt
			tt.url += "-" + c.String()
			var mod func(*Options)
			if enc {
				tt.url += "-enc"
				mod = func(o *Options) { o.Key = bytes.Repeat([]byte("k"), 32) }
			} else {
				mod = func(*Options) {}
			}
			s := tt.open(t, mod)
			ctx := ctxT(t)
			b, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize, Compression: &c})
			require.NoError(t, err)
			require.Equal(t, c.String(), b.Compression)
			sink := newMemImage(len(img.b))
			_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: sink, SinkZeroed: true})
			require.NoError(t, err)
			require.True(t, bytes.Equal(img.b, sink.b), "%s enc=%v", c, enc)
		}
	}
}

// TestEncryption: no plaintext block content in any object; a wrong or
// missing key is a clear error.
func TestEncryption(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tt testTarget) {
		ctx := ctxT(t)
		key := []byte("0123456789abcdef0123456789abcdef")
		s := tt.open(t, func(o *Options) { o.Key = key })
		require.True(t, s.Encrypted())
		img := newMemImage(4 << 20)
		fillMixed(img, 11)
		// A recognisable secret in several blocks.
		secret := []byte("TOP-SECRET-PAYLOAD-cairn-must-not-leak-this")
		for off := 0; off+len(secret) < len(img.b); off += 300 << 10 {
			copy(img.b[off:], secret)
		}
		c := CompressionNone // store raw so only encryption hides it
		_, err := s.CreateBackup(ctx, BackupOptions{Volume: "secret-vol", Source: img, BlockSize: testBlockSize, Compression: &c})
		require.NoError(t, err)

		// Scan every object byte on disk for plaintext windows.
		files := readAllFiles(t, tt.dir)
		require.NotEmpty(t, files)
		probes := [][]byte{secret}
		for off := 0; off+64 <= len(img.b); off += 64 << 10 {
			if w := img.b[off+8 : off+40]; !isZero(w) {
				probes = append(probes, w)
			}
		}
		for path, b := range files {
			for _, p := range probes {
				require.False(t, bytes.Contains(b, p), "plaintext found in %s", path)
			}
		}

		sink := newMemImage(len(img.b))
		_, err = s.Restore(ctx, RestoreOptions{Volume: "secret-vol", Sink: sink, SinkZeroed: true})
		require.NoError(t, err)
		require.True(t, bytes.Equal(img.b, sink.b))

		_, err = Open(ctx, tt.url, withKey(tt.opts, []byte("another key of thirty-two bytes!")))
		require.ErrorIs(t, err, ErrWrongKey)
		_, err = Open(ctx, tt.url, withKey(tt.opts, nil))
		require.ErrorIs(t, err, ErrKeyRequired)
	})
}

func withKey(o Options, k []byte) Options { o.Key = k; return o }

func TestKeyOnUnencryptedTarget(t *testing.T) {
	tt := newFileTarget(t)
	tt.open(t)
	_, err := Open(ctxT(t), tt.url, withKey(tt.opts, bytes.Repeat([]byte{1}, 32)))
	require.ErrorIs(t, err, ErrNotEncrypted)
}

// TestCorruption: flipped bytes in one block's record inside its pack are
// reported, with the block id and the backup, by restore and by verify; a
// missing pack too, naming the pack and (verify) each block in it.
func TestCorruption(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tt testTarget) {
		for _, enc := range []bool{false, true} {
			ctx := ctxT(t)
			tt := tt
			if enc {
				tt.url += "-enc"
				tt.dir += "-enc"
				tt.opts.Key = bytes.Repeat([]byte("x"), 32)
			}
			s := tt.open(t)
			img := newMemImage(4 << 20)
			fillMixed(img, 21)
			b, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
			require.NoError(t, err)
			// Flip bytes in one record inside its pack, through the target.
			victim := firstBlock(t, s, "v", b.ID)
			damageRecord(t, s, victim)

			_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: newMemImage(len(img.b)), SinkZeroed: true})
			require.ErrorIs(t, err, ErrCorrupt)
			require.Contains(t, err.Error(), victim.String())
			require.Contains(t, err.Error(), b.ID)

			rep, err := s.Verify(ctx, VerifyOptions{})
			require.ErrorIs(t, err, ErrCorrupt)
			require.Len(t, rep.Problems, 1)
			require.Equal(t, victim, rep.Problems[0].Block)
			require.Equal(t, []string{"v/" + b.ID}, rep.Problems[0].Backups)
			require.Contains(t, err.Error(), victim.String())

			// A missing pack: every block in it is missing, named with
			// the pack.
			key, _, _, err := s.BlockLocation(ctx, victim)
			require.NoError(t, err)
			require.NoError(t, s.t.Delete(ctx, key))
			_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: newMemImage(len(img.b)), SinkZeroed: true})
			require.ErrorIs(t, err, ErrMissingBlock)
			require.Contains(t, err.Error(), "pack "+key[len("packs/xx/"):]+" is missing")
			rep, err = s.Verify(ctx, VerifyOptions{Volume: "v", Backup: b.ID, ExistenceOnly: true})
			require.ErrorIs(t, err, ErrMissingBlock)
			var named []BlockID
			for _, p := range rep.Problems {
				named = append(named, p.Block)
			}
			require.Contains(t, named, victim)
		}
	})
}

// TestS3StoppedMidBackup: the S3 server dies mid-backup → a clear error,
// nothing listed; after a restart the retry completes, nothing is orphaned
// or missing.
func TestS3StoppedMidBackup(t *testing.T) {
	tt := newS3Target(t)
	ctx := ctxT(t)
	s := tt.open(t, func(o *Options) { o.RequestTimeout = 3 * time.Second; o.MaxAttempts = 2 })
	img := newMemImage(testSize)
	fillMixed(img, 31)
	img.delay = 2 * time.Millisecond

	stopped := make(chan struct{})
	start := time.Now()
	_, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize,
		Progress: func(p Progress) {
			if p.BytesDone > p.BytesTotal/3 {
				select {
				case <-stopped:
				default:
					close(stopped)
					go tt.s3.Stop()
				}
			}
		}})
	require.Error(t, err)
	require.ErrorIs(t, err, ErrUnreachable, "got %v", err)
	require.Less(t, time.Since(start), 60*time.Second)
	t.Logf("error while S3 down: %v", err)

	tt.s3.Restart()
	list, err := s.List(ctx, "v")
	require.NoError(t, err)
	require.Empty(t, list, "a failed backup is not listed")

	b, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	require.Less(t, b.NewBlocks, b.Blocks-b.ZeroBlocks, "blocks uploaded before the failure are reused")
	checkNoOrphansAndRestore(t, tt, "v", b.ID, img)
}

// checkNoOrphansAndRestore checks, through a store whose clock is past
// every crashed holder's lock, that GC finds no unreferenced block in an
// indexed pack, removes the unindexed packs of the interrupted run and
// nothing else, and the backup restores byte-exact.
func checkNoOrphansAndRestore(t *testing.T, tt testTarget, vol, id string, want *memImage) {
	ctx := ctxT(t)
	s := tt.open(t, func(o *Options) {
		o.ExpiryClock = func() time.Time { return time.Now().Add(o.LockTTL + time.Second) }
	})
	g, err := s.GC(ctx, GCOptions{DryRun: true})
	require.NoError(t, err)
	require.Zero(t, g.UnreferencedBlocks, "orphaned blocks in indexed packs")
	require.Zero(t, g.AdoptedPacks+g.UnreadablePacks)
	// Packs stored but never indexed (the interrupted run's last ones)
	// are GC's to remove, and nothing else goes with them.
	g, err = s.GC(ctx, GCOptions{})
	require.NoError(t, err)
	require.Zero(t, g.PacksDeleted+g.PacksRepacked)
	g, err = s.GC(ctx, GCOptions{DryRun: true})
	require.NoError(t, err)
	require.Zero(t, g.UnindexedPacks+g.UnreferencedBlocks)
	_, err = s.Verify(ctx, VerifyOptions{})
	require.NoError(t, err)
	sink := newMemImage(len(want.b))
	_, err = s.Restore(ctx, RestoreOptions{Volume: vol, Backup: id, Sink: sink, SinkZeroed: true})
	require.NoError(t, err)
	require.True(t, bytes.Equal(want.b, sink.b))
}

// TestKilledBackupProcess: a backup process killed mid-upload leaves
// nothing listed; a retry completes with no orphan or missing block.
func TestKilledBackupProcess(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tt testTarget) {
		ctx := ctxT(t)
		s := tt.open(t)
		img := newMemImage(testSize)
		fillMixed(img, 41)

		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperBackupProcess$", "-test.v")
		cmd.Env = append(os.Environ(), "CAIRN_HELPER_BACKUP=1", "CAIRN_HELPER_URL="+tt.url,
			"CAIRN_HELPER_ENDPOINT="+tt.opts.Endpoint, "CAIRN_HELPER_AK="+tt.opts.AccessKeyID, "CAIRN_HELPER_SK="+tt.opts.SecretAccessKey)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		// Kill it once a few packs are stored.
		deadline := time.Now().Add(60 * time.Second)
		for {
			n := 0
			_ = s.t.List(ctx, "packs/", func(ObjectInfo) error { n++; return nil })
			if n >= 5 {
				break
			}
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("helper stored no packs: %s", out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		require.NoError(t, cmd.Process.Kill())
		_ = cmd.Wait()

		list, err := s.List(ctx, "v")
		require.NoError(t, err)
		require.Empty(t, list, "killed backup must not be listed: %s", out.String())

		b, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
		require.NoError(t, err)
		checkNoOrphansAndRestore(t, tt, "v", b.ID, img)
	})
}

// TestHelperBackupProcess is the child of TestKilledBackupProcess: a slow
// backup that the parent kills.
func TestHelperBackupProcess(t *testing.T) {
	if os.Getenv("CAIRN_HELPER_BACKUP") != "1" {
		t.Skip("helper process")
	}
	o := testOptions()
	o.Endpoint = os.Getenv("CAIRN_HELPER_ENDPOINT")
	o.AccessKeyID = os.Getenv("CAIRN_HELPER_AK")
	o.SecretAccessKey = os.Getenv("CAIRN_HELPER_SK")
	s, err := Open(context.Background(), os.Getenv("CAIRN_HELPER_URL"), o)
	require.NoError(t, err)
	img := newMemImage(testSize)
	fillMixed(img, 41)
	img.delay = 20 * time.Millisecond
	_, err = s.CreateBackup(context.Background(), BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	t.Fatal("helper backup finished before it was killed")
}

// TestDeleteDuringBackup: deleting a backup while another backup of the
// same volume runs loses no block the running one needs.
func TestDeleteDuringBackup(t *testing.T) {
	forEachTarget(t, func(t *testing.T, tt testTarget) {
		ctx := ctxT(t)
		s := tt.open(t, func(o *Options) { o.LockWait = 500 * time.Millisecond })
		img := newMemImage(testSize)
		fillMixed(img, 51)
		b1, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
		require.NoError(t, err)

		mutate(img, 52, 4)
		// New content in the second half, so that b1's packs there hold
		// only blocks no other backup references.
		half := newMemImage(testSize / 2)
		fillMixed(half, 53)
		copy(img.b[testSize/2:], half.b)
		want := img.clone()
		// The running backup stops after a few blocks, holding the block
		// set, until the delete has returned.
		slow := img.clone()
		progressed, release := make(chan struct{}), make(chan struct{})
		var reads atomic.Int32
		slow.hold = func() {
			if reads.Add(1) == 10 {
				close(progressed)
			}
			if reads.Load() >= 10 {
				<-release
			}
		}
		type result struct {
			b   BackupInfo
			err error
		}
		done := make(chan result, 1)
		go func() {
			// No diff: every block is hashed and most are found in b1.
			b, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: slow, BlockSize: testBlockSize, Base: b1.ID})
			done <- result{b, err}
		}()
		<-progressed
		d, err := s.Delete(ctx, "v", b1.ID)
		close(release)
		require.NoError(t, err)
		require.True(t, d.Deferred, "block removal waits for the running backup")
		require.Zero(t, d.BlocksDeleted)
		r := <-done
		require.NoError(t, r.err)

		list, err := s.List(ctx, "v")
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.Equal(t, r.b.ID, list[0].ID)

		sink := newMemImage(testSize)
		_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Backup: r.b.ID, Sink: sink, SinkZeroed: true})
		require.NoError(t, err)
		require.True(t, bytes.Equal(want.b, sink.b))

		// GC now removes what only b1 used, and the running backup's
		// blocks all survive.
		g, err := s.GC(ctx, GCOptions{})
		require.NoError(t, err)
		require.Positive(t, g.UnreferencedBlocks, "b1's own blocks are collected")
		require.Positive(t, g.PacksDeleted, "b1's packs of the second half held only its own blocks")
		require.Equal(t, 1, g.OrphanManifests)
		checkNoOrphansAndRestore(t, tt, "v", r.b.ID, want)
	})
}

// TestDeleteRefcount: deleting a backup removes exactly the blocks no other
// backup of any volume references.
func TestDeleteRefcount(t *testing.T) {
	tt := newFileTarget(t)
	ctx := ctxT(t)
	s := tt.open(t)
	a := newMemImage(4 << 20)
	fillMixed(a, 61)
	other := a.clone() // another volume sharing every block
	ba, err := s.CreateBackup(ctx, BackupOptions{Volume: "a", Source: a, BlockSize: testBlockSize})
	require.NoError(t, err)
	bo, err := s.CreateBackup(ctx, BackupOptions{Volume: "o", Source: other, BlockSize: testBlockSize})
	require.NoError(t, err)
	require.Zero(t, bo.NewBlocks, "deduplicated across volumes")
	mutate(a, 62, 3)
	ba2, err := s.CreateBackup(ctx, BackupOptions{Volume: "a", Source: a, BlockSize: testBlockSize})
	require.NoError(t, err)

	d, err := s.Delete(ctx, "a", ba.ID)
	require.NoError(t, err)
	require.Zero(t, d.BlocksDeleted, "every block is still used by volume o")
	d, err = s.Delete(ctx, "a", ba2.ID)
	require.NoError(t, err)
	require.Equal(t, ba2.NewBlocks, d.BlocksDeleted)
	_, err = s.Delete(ctx, "a", ba2.ID)
	require.ErrorIs(t, err, ErrBackupNotFound)

	g, err := s.GC(ctx, GCOptions{DryRun: true})
	require.NoError(t, err)
	require.Zero(t, g.UnreferencedBlocks)
	require.Zero(t, g.OrphanManifests)
	_, err = s.Verify(ctx, VerifyOptions{})
	require.NoError(t, err)
}

// TestLocks: exclusive and shared conflict, a crashed holder's lock expires.
func TestLocks(t *testing.T) {
	tt := newFileTarget(t)
	ctx := ctxT(t)
	s := tt.open(t, func(o *Options) { o.LockWait = 300 * time.Millisecond; o.LockTTL = time.Second })
	sh1, _, err := s.acquire(ctx, scopeBlocks, false, "a", time.Second)
	require.NoError(t, err)
	sh2, _, err := s.acquire(ctx, scopeBlocks, false, "b", time.Second)
	require.NoError(t, err)
	_, _, err = s.acquire(ctx, scopeBlocks, true, "gc", 300*time.Millisecond)
	require.ErrorIs(t, err, ErrLocked)
	require.Contains(t, err.Error(), s.holder)
	sh1.release()
	sh2.release()
	ex, _, err := s.acquire(ctx, scopeBlocks, true, "gc", time.Second)
	require.NoError(t, err)
	_, _, err = s.acquire(ctx, scopeBlocks, false, "backup", 300*time.Millisecond)
	require.ErrorIs(t, err, ErrLocked)
	// Simulate a crash: stop refreshing without removing the object.
	close(ex.stop)
	<-ex.done
	start := time.Now()
	l, _, err := s.acquire(ctx, scopeBlocks, false, "backup", 5*time.Second)
	require.NoError(t, err, "an expired lock never blocks forever")
	require.Less(t, time.Since(start), 4*time.Second)
	l.release()
	locks, err := s.Locks(ctx)
	require.NoError(t, err)
	require.Empty(t, locks)
}

// TestBadInput: each bad target is a clear error within bounded time.
func TestBadInput(t *testing.T) {
	srv := testutil.StartS3(t)
	good := testOptions()
	good.Endpoint, good.AccessKeyID, good.SecretAccessKey = srv.Endpoint, srv.AccessKey, srv.SecretKey
	wrongCreds := good
	wrongCreds.SecretAccessKey = "not-the-secret"
	unreachable := good
	unreachable.Endpoint = "http://127.0.0.1:1"
	noCreds := good
	noCreds.AccessKeyID, noCreds.SecretAccessKey = "", ""
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	noHost := good
	noHost.Endpoint = "http://no-such-host.invalid:9000"
	cases := []struct {
		name string
		url  string
		opts Options
		want error
	}{
		{"bad url", "s3://%zz", good, ErrBadURL},
		{"no scheme", "bucket/prefix", good, ErrBadURL},
		{"no bucket", "s3:///prefix", good, ErrBadURL},
		{"unknown scheme", "ftp://host/x", good, ErrUnsupportedScheme},
		{"relative file", "file://relative/path", good, ErrBadURL},
		{"file parent missing", "file:///nonexistent-cairn-dir/x", good, ErrBucketNotFound},
		{"wrong credentials", srv.URL("p"), wrongCreds, ErrAccessDenied},
		{"missing bucket", "s3://no-such-bucket/p", good, ErrBucketNotFound},
		{"unreachable endpoint", srv.URL("p"), unreachable, ErrUnreachable},
		{"unresolvable endpoint", srv.URL("p"), noHost, ErrUnreachable},
		{"no credentials", srv.URL("p"), noCreds, ErrNoCredentials},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := Open(context.Background(), c.url, c.opts)
			require.ErrorIs(t, err, c.want, "got %v", err)
			require.Less(t, time.Since(start), 20*time.Second)
		})
	}
	// Bad names never become object keys.
	s, err := Open(context.Background(), srv.URL("p"), good)
	require.NoError(t, err)
	_, err = s.List(context.Background(), "../etc")
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = s.CreateBackup(context.Background(), BackupOptions{Volume: "a/b", Source: newMemImage(4096)})
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = s.Restore(context.Background(), RestoreOptions{Volume: "v", Backup: "nope", Sink: newMemImage(1)})
	require.ErrorIs(t, err, ErrBackupNotFound)
	ro, err := Open(context.Background(), srv.URL("p"), func() Options { o := good; o.ReadOnly = true; return o }())
	require.NoError(t, err)
	_, err = ro.CreateBackup(context.Background(), BackupOptions{Volume: "v", Source: newMemImage(4096)})
	require.ErrorIs(t, err, ErrReadOnly)
	_, err = Open(context.Background(), srv.URL("empty"), func() Options { o := good; o.ReadOnly = true; return o }())
	require.ErrorIs(t, err, ErrNotInitialized)
}

// TestCodecTamper: headers are authenticated and versioned.
func TestCodecTamper(t *testing.T) {
	idKey, encKey, _, err := deriveKeys([]byte("0123456789abcdef"), []byte("salt"))
	require.NoError(t, err)
	for _, c := range []*codec{mustCodec(t, nil, nil), mustCodec(t, idKey, encKey)} {
		payload := bytes.Repeat([]byte("cairn "), 1000)
		obj, err := c.encode(nil, kindBlock, CompressionZstd, payload, []byte("id"))
		require.NoError(t, err)
		got, err := c.decode(nil, kindBlock, bytes.Clone(obj), []byte("id"))
		require.NoError(t, err)
		require.Equal(t, payload, got)

		bad := bytes.Clone(obj)
		bad[5] = 9
		_, err = c.decode(nil, kindBlock, bad, []byte("id"))
		require.ErrorIs(t, err, ErrFormat)
		_, err = c.decode(nil, kindManifest, bytes.Clone(obj), []byte("id"))
		require.ErrorIs(t, err, ErrFormat)
		if c.aead != nil {
			_, err = c.decode(nil, kindBlock, bytes.Clone(obj), []byte("other-id"))
			require.ErrorIs(t, err, ErrCorrupt, "ciphertext is bound to its id")
		}
	}
}

func mustCodec(t *testing.T, idKey, encKey []byte) *codec {
	c, err := newCodec(idKey, encKey, 0)
	require.NoError(t, err)
	return c
}

var _ = errors.Is

// TestS3CustomCA: an HTTPS endpoint with a private CA works with the CA
// bundle and fails clearly without it.
func TestS3CustomCA(t *testing.T) {
	srv := testutil.StartS3TLS(t)
	o := testOptions()
	o.Endpoint, o.AccessKeyID, o.SecretAccessKey = srv.Endpoint, srv.AccessKey, srv.SecretKey
	_, err := Open(context.Background(), srv.URL("tls"), o)
	require.Error(t, err, "untrusted certificate")
	require.Contains(t, err.Error(), "certificate")

	o.CABundle = srv.CACert
	s, err := Open(context.Background(), srv.URL("tls"), o)
	require.NoError(t, err)
	img := newMemImage(1 << 20)
	fillMixed(img, 81)
	_, err = s.CreateBackup(ctxT(t), BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	sink := newMemImage(len(img.b))
	_, err = s.Restore(ctxT(t), RestoreOptions{Volume: "v", Sink: sink, SinkZeroed: true})
	require.NoError(t, err)
	require.True(t, bytes.Equal(img.b, sink.b))
}

// TestS3Blackhole: an endpoint that accepts connections and never answers
// fails Open within the probe timeout.
func TestS3Blackhole(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	o := testOptions()
	o.Endpoint, o.AccessKeyID, o.SecretAccessKey = "http://"+l.Addr().String(), "a", "b"
	o.ProbeTimeout = 2 * time.Second
	start := time.Now()
	_, err = Open(context.Background(), "s3://bucket/p", o)
	require.ErrorIs(t, err, ErrUnreachable)
	require.Less(t, time.Since(start), 10*time.Second)
}

// TestIncrementalRestoreSinceDeleted: when the backup the sink holds was
// deleted, an incremental restore falls back to a full one (zero blocks
// trimmed), still byte-exact; sampled verify checks a subset.
func TestIncrementalRestoreSinceDeleted(t *testing.T) {
	tt := newFileTarget(t)
	ctx := ctxT(t)
	s := tt.open(t)
	img := newMemImage(4 << 20)
	fillMixed(img, 91)
	b1, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	sink := img.clone()
	fillMixed(img, 92)
	b2, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	_, err = s.Delete(ctx, "v", b1.ID)
	require.NoError(t, err)

	res, err := s.Restore(ctx, RestoreOptions{Volume: "v", Backup: b2.ID, Since: b1.ID, Sink: sink})
	require.NoError(t, err)
	require.False(t, res.Incremental)
	require.Positive(t, sink.trims, "zero blocks are trimmed on a non-fresh sink")
	require.True(t, bytes.Equal(img.b, sink.b))

	rep, err := s.Verify(ctx, VerifyOptions{Sample: 0.3})
	require.NoError(t, err)
	require.Less(t, rep.BlocksChecked, rep.Blocks)
	require.Positive(t, rep.BlocksChecked)
}

// TestFileSinkSparse: restoring into a fresh file writes only non-zero
// pages of preallocated blocks, skips zero blocks, and is byte-exact.
func TestFileSinkSparse(t *testing.T) {
	tt := newFileTarget(t)
	ctx := ctxT(t)
	s := tt.open(t)
	img := newMemImage(8 << 20)
	fillMixed(img, 101)
	clear(img.b[100<<10 : 300<<10]) // zero pages inside non-zero blocks
	_, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize * 4})
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "restored.img")
	sink, fresh, err := CreateFileSink(path, int64(len(img.b)))
	require.NoError(t, err)
	require.True(t, fresh)
	_, err = s.Restore(ctx, RestoreOptions{Volume: "v", Sink: sink, SinkZeroed: fresh})
	require.NoError(t, err)
	require.NoError(t, sink.Close())
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(img.b, got))
	require.Equal(t, []Extent{{Offset: 4096, Length: 8192}}, nonZeroRuns(append(make([]byte, 4096), append(bytes.Repeat([]byte{1}, 8192), make([]byte, 4096)...)...), 4096))
}

// TestFileSinkDirectAndBuffered: aligned writes take the O_DIRECT path
// (where the filesystem has one), unaligned ones the buffered path, and
// the file reads back what was written either way, also after rewriting
// a range through the other path.
func TestFileSinkDirectAndBuffered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sink.img")
	const size = 1 << 20
	sink, fresh, err := CreateFileSink(path, size)
	require.NoError(t, err)
	require.True(t, fresh)
	want := make([]byte, size)
	buf := make([]byte, 256<<10) // large allocations are page aligned
	write := func(p []byte, off int64) {
		t.Helper()
		for i := range p {
			p[i] = byte(off) + byte(i*7)
		}
		n, err := sink.WriteAt(p, off)
		require.NoError(t, err)
		require.Equal(t, len(p), n)
		copy(want[off:], p)
	}
	require.True(t, aligned(buf, 0))
	write(buf, 0)             // direct (if supported)
	write(buf[:5000], 8192)   // buffered: odd length
	write(buf[1:4097], 65536) // buffered: unaligned memory
	write(buf[:8192], 12345)  // buffered: unaligned offset
	write(buf[:4096*3], 8192) // direct over ranges just written buffered
	write(buf, 512<<10)
	require.NoError(t, sink.Sync())
	require.NoError(t, sink.Close())
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
}

// TestLockLostAbortsBackup: a backup whose lock cannot be refreshed before
// it expires (the target went away for longer than the TTL) aborts with
// ErrLockLost instead of going on under a lock others may consider stale,
// and leaves nothing listed; a retry then completes.
func TestLockLostAbortsBackup(t *testing.T) {
	tt := newS3Target(t)
	ctx := ctxT(t)
	const ttl = 1500 * time.Millisecond
	s := tt.open(t, func(o *Options) { o.LockTTL = ttl; o.RequestTimeout = time.Second; o.MaxAttempts = 1 })
	img := newMemImage(testSize)
	fillMixed(img, 81)
	// The backup stops at its first read of the volume: everything it
	// did on S3 before (lock, catalogue) is finished, so while S3 is away
	// only the lock's refresh can fail.
	slow := img.clone()
	reached, release := make(chan struct{}), make(chan struct{})
	var reads atomic.Int32
	slow.hold = func() {
		if reads.Add(1) == 1 {
			close(reached)
		}
		<-release
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.CreateBackup(ctx, BackupOptions{Volume: "v", Source: slow, BlockSize: testBlockSize})
		done <- err
	}()
	<-reached
	tt.s3.Stop()
	time.Sleep(ttl + ttl/3 + time.Second) // past the expiry and the refresher's next tick
	tt.s3.Restart()
	close(release)
	err := <-done
	require.ErrorIs(t, err, ErrLockLost, "got %v", err)

	list, err := s.List(ctx, "v")
	require.NoError(t, err)
	require.Empty(t, list, "a backup that lost its lock is not listed")
	// The retry runs with the suite's TTL: the short one above exists to
	// lose a lock, and would lose this one too on a loaded machine.
	b, err := tt.open(t).CreateBackup(ctx, BackupOptions{Volume: "v", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	checkNoOrphansAndRestore(t, tt, "v", b.ID, img)
}

// TestDeleteFinishesInterruptedDelete: a Delete cut short after its
// catalogue write (a killed manager) leaves the manifest and the blocks
// only it used; the next Delete of that backup removes them. A manifest
// ahead of its catalogue (a commit cut short) is never taken for one.
func TestDeleteFinishesInterruptedDelete(t *testing.T) {
	tt := newFileTarget(t)
	ctx := ctxT(t)
	s := tt.open(t)
	a := newMemImage(4 << 20)
	fillMixed(a, 71)
	_, err := s.CreateBackup(ctx, BackupOptions{Volume: "a", Source: a, BlockSize: testBlockSize})
	require.NoError(t, err)
	mutate(a, 72, 3)
	b2, err := s.CreateBackup(ctx, BackupOptions{Volume: "a", Source: a, BlockSize: testBlockSize})
	require.NoError(t, err)
	require.NotZero(t, b2.NewBlocks)

	// The first half of a Delete of b2: unlisted, nothing else removed.
	require.NoError(t, s.updateCatalogue(ctx, "a", "test", func(_ context.Context, c *catalogue) error {
		c.Backups = slices.DeleteFunc(c.Backups, func(b BackupInfo) bool { return b.ID == b2.ID })
		return nil
	}))
	g, err := s.GC(ctx, GCOptions{DryRun: true})
	require.NoError(t, err)
	require.Equal(t, 1, g.OrphanManifests)
	require.Equal(t, b2.NewBlocks, g.UnreferencedBlocks)

	d, err := s.Delete(ctx, "a", b2.ID)
	require.NoError(t, err)
	require.Equal(t, b2.NewBlocks, d.BlocksDeleted)
	g, err = s.GC(ctx, GCOptions{DryRun: true})
	require.NoError(t, err)
	require.Zero(t, g.OrphanManifests)
	require.Zero(t, g.UnreferencedBlocks)
	_, err = s.Delete(ctx, "a", b2.ID)
	require.ErrorIs(t, err, ErrBackupNotFound)

	// A commit cut short: b3's manifest is ahead of the catalogue put back.
	before, err := s.t.Get(ctx, catalogueKey("a"))
	require.NoError(t, err)
	mutate(a, 73, 3)
	b3, err := s.CreateBackup(ctx, BackupOptions{Volume: "a", Source: a, BlockSize: testBlockSize})
	require.NoError(t, err)
	require.NoError(t, s.t.Put(ctx, catalogueKey("a"), before))
	_, err = s.Delete(ctx, "a", b3.ID)
	require.ErrorIs(t, err, ErrCatalogueRollback)
	ok, err := s.t.Exists(ctx, manifestKey("a", b3.ID))
	require.NoError(t, err)
	require.True(t, ok, "Delete removed the manifest of an uncommitted backup")
}
