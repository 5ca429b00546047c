package replica

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// chainFiles counts the layer files in r's directory besides the
// pre-created head file for the next snapshot.
func chainFiles(t testing.TB, r *Replica) int {
	t.Helper()
	r.spareRun.Wait()
	m, err := filepath.Glob(filepath.Join(r.Dir(), "layer-*.img"))
	require.NoError(t, err)
	return len(m) - len(r.spares)
}

// mergeSetup writes a big snapshot "base" (plus an older one) and a few
// head blocks (including a zeroed block over base data and a trimmed one
// over nothing), returning the expected head content.
func mergeSetup(t *testing.T, r *Replica, size int64) []byte {
	rng := rand.New(rand.NewPCG(31, 32))
	_, err := r.WriteAt(randBlocks(rng, 8), 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("old", nil))
	_, err = r.WriteAt(randBlocks(rng, int(size/BlockSize/2)), 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("base", nil))
	_, err = r.WriteAt(randBlocks(rng, 2), 5*BlockSize)
	require.NoError(t, err)
	_, err = r.WriteAt([]byte("partial"), 100*BlockSize+7)
	require.NoError(t, err)
	require.NoError(t, r.WriteZeroes(20*BlockSize, 3*BlockSize))
	_, err = r.WriteAt(randBlocks(rng, 1), size-BlockSize)
	require.NoError(t, err)
	return readAll(t, r, size)
}

// TestRemoveSnapshotMergesHeadDown: removing the snapshot under a small
// head merges the head into it (the snapshot's file becomes the head), and
// the head reads the same before and after, and after reopen.
func TestRemoveSnapshotMergesHeadDown(t *testing.T) {
	const size = 2 << 20
	r := newTestReplica(t, size)
	want := mergeSetup(t, r, size)
	oldSnap, err := r.OpenSnapshot("old")
	require.NoError(t, err)
	defer oldSnap.Close()
	wantOld := readAll(t, oldSnap, size)
	baseID := r.layers[1].rec.ID
	headPath := r.layers[2].path
	require.NoError(t, r.RemoveSnapshot("base"))
	require.Equal(t, baseID, r.layers[len(r.layers)-1].rec.ID, "the snapshot's file became the head")
	_, err = os.Stat(headPath)
	require.ErrorIs(t, err, os.ErrNotExist, "old head file removed")
	require.Equal(t, 2, chainFiles(t, r))
	requireSame(t, want, readAll(t, r, size), "head after merge")
	requireSame(t, wantOld, readAll(t, oldSnap, size), "older snapshot reader")
	// the merged head keeps working
	_, err = r.WriteAt(bytes.Repeat([]byte{9}, BlockSize), 3*BlockSize)
	require.NoError(t, err)
	copy(want[3*BlockSize:], bytes.Repeat([]byte{9}, BlockSize))
	r = reopen(t, r)
	requireSame(t, want, readAll(t, r, size), "head after reopen")
	require.Equal(t, []string{"old"}, snapNames(r))
	sr, err := r.OpenSnapshot("old")
	require.NoError(t, err)
	requireSame(t, wantOld, readAll(t, sr, size), "older snapshot after reopen")
	sr.Close()
}

func snapNames(r *Replica) []string {
	var n []string
	for _, s := range r.Snapshots() {
		n = append(n, s.Name)
	}
	return n
}

// TestRemoveSnapshotCopiesUpWhenPinned: a reader of the snapshot keeps
// it from being merged into (the copy-up path runs instead).
func TestRemoveSnapshotCopiesUpWhenPinned(t *testing.T) {
	const size = 1 << 20
	r := newTestReplica(t, size)
	want := mergeSetup(t, r, size)
	sr, err := r.OpenSnapshot("base")
	require.NoError(t, err)
	wantBase := readAll(t, sr, size)
	headID := r.layers[2].rec.ID
	require.NoError(t, r.RemoveSnapshot("base"))
	require.Equal(t, headID, r.layers[len(r.layers)-1].rec.ID, "copy-up keeps the head file")
	requireSame(t, wantBase, readAll(t, sr, size), "reader of the removed snapshot")
	requireSame(t, want, readAll(t, r, size), "head")
	sr.Close()
	require.Empty(t, r.pins)
}

// failSecondMergeCopy makes the second chunk copy of a merge fail, as a
// crash half-way through would leave it; reset at cleanup.
func failSecondMergeCopy(t *testing.T) {
	n := 0
	testHook = func(p string) error {
		if p == "merge" {
			if n++; n == 2 {
				return errors.New("injected crash")
			}
		}
		return nil
	}
	t.Cleanup(func() { testHook = nil })
}

// crashedRemove removes snapshot name with the merge copy failing half-way:
// the replica refuses further I/O; it is closed and the metadata on disk
// (a merge pending) returned with the directory.
func crashedRemove(t *testing.T, r *Replica, name string) (string, *metaFile) {
	t.Helper()
	failSecondMergeCopy(t)
	require.Error(t, r.RemoveSnapshot(name))
	_, err := r.WriteAt(make([]byte, BlockSize), 0)
	require.ErrorIs(t, err, ErrClosed)
	testHook = nil
	dir := r.Dir()
	r.Close()
	buf, err := os.ReadFile(filepath.Join(dir, metaName))
	require.NoError(t, err)
	m, _, _, err := parseMeta("meta", buf)
	require.NoError(t, err)
	require.NotEmpty(t, m.MergeFrom, "merge pending on disk")
	return dir, m
}

// TestMergeCrashFinishedByOpen: the copy fails half-way after the new
// chain was committed (as a crash would leave it): the replica refuses
// further work, and Open finishes the merge.
func TestMergeCrashFinishedByOpen(t *testing.T) {
	const size = 2 << 20
	r := newTestReplica(t, size)
	want := mergeSetup(t, r, size)
	dir, m := crashedRemove(t, r, "base")
	require.Empty(t, m.MergeInto)
	r, err := Open(dir)
	require.NoError(t, err)
	defer r.Close()
	requireSame(t, want, readAll(t, r, size), "head after finished merge")
	require.Equal(t, []string{"old"}, snapNames(r))
	require.Empty(t, r.meta.MergeFrom)
	require.Equal(t, 2, chainFiles(t, r))
}

// TestMergeDownUnderLiveWrites: writers keep writing, zeroing, trimming
// and partially rewriting their own blocks while the snapshot under the
// head is merged down; afterwards (and after reopen) every block holds
// its writer's last content.
func TestMergeDownUnderLiveWrites(t *testing.T) {
	const size = 4 << 20
	const blocks = size / BlockSize
	const writers = 4
	r := newTestReplica(t, size)
	rng := rand.New(rand.NewPCG(61, 62))
	model := randBlocks(rng, blocks)
	_, err := r.WriteAt(model, 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("base", nil))
	for i := 0; i < 300; i++ {
		b := rng.Int64N(blocks)
		p := randBlocks(rng, 1)
		_, err := r.WriteAt(p, b*BlockSize)
		require.NoError(t, err)
		copy(model[b*BlockSize:], p)
	}
	baseID := r.layers[0].rec.ID
	// slow the merge's copy down so the writers overlap all of it
	testHook = func(p string) error {
		if p == "merge" {
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	defer func() { testHook = nil }()
	stop := make(chan struct{})
	errs := make(chan error, writers)
	var started sync.WaitGroup
	started.Add(writers)
	for w := 0; w < writers; w++ {
		go func() {
			wr := rand.New(rand.NewPCG(uint64(w), 63))
			var err error
			for n := 0; err == nil; n++ {
				if n == 20 {
					started.Done()
				}
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				b := wr.Int64N(blocks/writers)*writers + int64(w)
				blk := model[b*BlockSize : (b+1)*BlockSize] // only w touches block b
				switch wr.IntN(5) {
				case 0:
					err = r.WriteZeroes(b*BlockSize, BlockSize)
					clear(blk)
				case 1:
					err = r.Trim(b*BlockSize, BlockSize)
					clear(blk)
				case 2:
					p := []byte(fmt.Sprintf("partial %d/%d", w, n))
					off := wr.Int64N(BlockSize - int64(len(p)))
					_, err = r.WriteAt(p, b*BlockSize+off)
					copy(blk[off:], p)
				default:
					p := bytes.Repeat([]byte{byte(n)}, BlockSize)
					_, err = r.WriteAt(p, b*BlockSize)
					copy(blk, p)
				}
			}
			errs <- err
		}()
	}
	started.Wait()
	require.NoError(t, r.RemoveSnapshot("base"))
	close(stop)
	for w := 0; w < writers; w++ {
		require.NoError(t, <-errs)
	}
	require.Equal(t, baseID, r.layers[len(r.layers)-1].rec.ID, "merged down")
	requireSame(t, model, readAll(t, r, size), "after merge")
	r = reopen(t, r)
	requireSame(t, model, readAll(t, r, size), "after reopen")
}

// snapMergeSetup builds big → small → head and returns what "small" and
// the head read.
func snapMergeSetup(t *testing.T, r *Replica, size int64) (small, head []byte) {
	rng := rand.New(rand.NewPCG(41, 42))
	_, err := r.WriteAt(randBlocks(rng, int(size/BlockSize/2)), 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("big", nil))
	_, err = r.WriteAt(randBlocks(rng, 3), 7*BlockSize)
	require.NoError(t, err)
	require.NoError(t, r.WriteZeroes(30*BlockSize, 2*BlockSize))
	_, err = r.WriteAt(randBlocks(rng, 1), size-BlockSize)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("small", map[string]string{"k": "v"}))
	_, err = r.WriteAt(randBlocks(rng, 2), 8*BlockSize)
	require.NoError(t, err)
	sr, err := r.OpenSnapshot("small")
	require.NoError(t, err)
	small = readAll(t, sr, size)
	require.NoError(t, sr.Close())
	return small, readAll(t, r, size)
}

// TestRemoveSnapshotMergesSnapshotDown: removing a big snapshot under a
// small one merges the small one down (the big one's file takes its place
// and name); the small snapshot and the head read the same, before and
// after reopen.
func TestRemoveSnapshotMergesSnapshotDown(t *testing.T) {
	const size = 2 << 20
	r := newTestReplica(t, size)
	wantSmall, wantHead := snapMergeSetup(t, r, size)
	bigID, smallPath := r.layers[0].rec.ID, r.layers[1].path
	require.NoError(t, r.RemoveSnapshot("big"))
	require.Equal(t, bigID, r.layers[0].rec.ID, "the big snapshot's file took the small one's place")
	require.Equal(t, "small", r.layers[0].rec.Name)
	require.Equal(t, map[string]string{"k": "v"}, r.layers[0].rec.Labels)
	_, err := os.Stat(smallPath)
	require.ErrorIs(t, err, os.ErrNotExist, "merged file removed")
	require.Equal(t, 2, chainFiles(t, r))
	check := func(r *Replica, when string) {
		requireSame(t, wantHead, readAll(t, r, size), "head "+when)
		sr, err := r.OpenSnapshot("small")
		require.NoError(t, err)
		requireSame(t, wantSmall, readAll(t, sr, size), "snapshot "+when)
		require.NoError(t, sr.Close())
	}
	check(r, "after merge")
	_, err = r.WriteAt(bytes.Repeat([]byte{7}, BlockSize), 9*BlockSize)
	require.NoError(t, err)
	copy(wantHead[9*BlockSize:], bytes.Repeat([]byte{7}, BlockSize))
	r = reopen(t, r)
	check(r, "after reopen")
	require.Equal(t, []string{"small"}, snapNames(r))
}

// TestSnapshotMergeCrashFinishedByOpen: the snapshot merge-down fails
// half-way after the new chain was committed; Open finishes it.
func TestSnapshotMergeCrashFinishedByOpen(t *testing.T) {
	const size = 2 << 20
	r := newTestReplica(t, size)
	wantSmall, wantHead := snapMergeSetup(t, r, size)
	dir, m := crashedRemove(t, r, "big")
	require.NotEmpty(t, m.MergeInto)
	r, err := Open(dir)
	require.NoError(t, err)
	defer r.Close()
	require.Empty(t, r.meta.MergeFrom)
	require.Equal(t, []string{"small"}, snapNames(r))
	requireSame(t, wantHead, readAll(t, r, size), "head after finished merge")
	sr, err := r.OpenSnapshot("small")
	require.NoError(t, err)
	requireSame(t, wantSmall, readAll(t, sr, size), "snapshot after finished merge")
	require.NoError(t, sr.Close())
	require.Equal(t, 2, chainFiles(t, r))
}
