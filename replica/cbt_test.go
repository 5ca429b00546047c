package replica

import (
	"bytes"
	"cmp"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestChangedSince: a replica that missed writes after a generation bump
// catches up by copying only the regions ChangedSince reports.
func TestChangedSince(t *testing.T) {
	const size = 32 << 20
	rng := rand.New(rand.NewPCG(51, 52))
	src := newTestReplica(t, size)
	dst := newTestReplica(t, size)
	both := func(p []byte, off int64) {
		_, err := src.WriteAt(p, off)
		require.NoError(t, err)
		_, err = dst.WriteAt(p, off)
		require.NoError(t, err)
	}
	for i := 0; i < 200; i++ {
		both(randBlocks(rng, 1+rng.IntN(4)), rng.Int64N(size/BlockSize-4)*BlockSize)
	}
	_, err := src.ChangedSince(0, 0, size)
	require.ErrorIs(t, err, ErrNotFound, "nothing tracked before a generation bump")

	// dst leaves: the engine raises the generation on src, which goes on
	require.NoError(t, src.SetGeneration(2))
	_, err = src.ChangedSince(3, 0, size)
	require.ErrorIs(t, err, ErrNotFound, "a future generation")
	var written int64
	for i := 0; i < 40; i++ {
		off := rng.Int64N(size-3*BlockSize) &^ 511
		_, err := src.WriteAt(randBlocks(rng, 2)[:2*BlockSize-100], off) // unaligned too
		require.NoError(t, err)
		written += 2 * BlockSize
	}
	require.NoError(t, src.Trim(5<<20, 1<<20))
	require.NoError(t, src.WriteZeroes(9<<20+100, 3*BlockSize))
	require.NoError(t, src.Snapshot("later", nil)) // snapshots do not reset tracking
	_, err = src.WriteAt(randBlocks(rng, 1), size-BlockSize)
	require.NoError(t, err)
	require.NoError(t, src.SetGeneration(3))
	_, err = src.WriteAt(randBlocks(rng, 1), 0)
	require.NoError(t, err)

	// dst returns: copy what changed since generation 2, over the wire
	c := dialTest(t, startServer(t, src))
	ctx := context.Background()
	ext, err := c.ChangedSince(ctx, 2, size)
	require.NoError(t, err)
	var copied int64
	for _, e := range ext {
		require.Zero(t, e.Offset%BlockSize)
		buf := make([]byte, e.Length)
		_, err := c.ReadAt(ctx, buf, e.Offset)
		require.NoError(t, err)
		_, err = dst.WriteAt(buf, e.Offset)
		require.NoError(t, err)
		copied += e.Length
	}
	requireSame(t, readAll(t, src, size), readAll(t, dst, size), "after catching up")
	require.Less(t, copied, int64(size/4), "copied only the changed regions")
	// the newer bitmap holds only the last write; a generation is answered
	// from the newest bitmap started at or before it
	ext3, err := src.ChangedSince(3, 0, size)
	require.NoError(t, err)
	require.Equal(t, []Extent{{0, 1 << cbtRegionShift}}, ext3)
	ext2b, err := src.ChangedSince(2, 0, size)
	require.NoError(t, err)
	require.Equal(t, ext, ext2b)
	// a revert replaces the head: nothing is tracked any more
	require.NoError(t, src.Revert("later"))
	_, err = src.ChangedSince(3, 0, size)
	require.ErrorIs(t, err, ErrNotFound)
}

// TestSessionStart: the tracker started when the generation goes from even
// to odd covers the session through odd bumps and unclean reopens;
// restart, revert or a dropped tracker report no session (0).
func TestSessionStart(t *testing.T) {
	const size = 8 << 20
	r := newTestReplica(t, size)
	require.Zero(t, r.Info().SessionStart)
	require.NoError(t, r.SetGeneration(2)) // even: a clean close
	require.Zero(t, r.Info().SessionStart)
	require.NoError(t, r.SetGeneration(3)) // opened
	require.EqualValues(t, 3, r.Info().SessionStart)
	_, err := r.WriteAt(make([]byte, BlockSize), 1<<20)
	require.NoError(t, err)
	require.NoError(t, r.SetGeneration(5)) // bump (a member dropped)
	require.NoError(t, r.SetGeneration(7)) // unclean reopen
	_, err = r.WriteAt(make([]byte, BlockSize), 5<<20)
	require.NoError(t, err)
	require.EqualValues(t, 3, r.Info().SessionStart)
	ext, err := r.ChangedSince(r.Info().SessionStart, 0, size)
	require.NoError(t, err)
	require.Equal(t, []Extent{{Offset: 1 << 20, Length: 1 << cbtRegionShift}, {Offset: 5 << 20, Length: 1 << cbtRegionShift}}, ext)
	// more bumps than trackers kept: the session tracker stays
	for g := uint64(9); g <= 21; g += 2 {
		require.NoError(t, r.SetGeneration(g))
	}
	require.EqualValues(t, 3, r.Info().SessionStart)
	require.Len(t, r.trackers, cbtMaxTrackers)
	ext2, err := r.ChangedSince(3, 0, size)
	require.NoError(t, err)
	require.Equal(t, ext, ext2)
	require.NoError(t, r.SetGeneration(22))
	require.NoError(t, r.SetGeneration(23))
	require.EqualValues(t, 23, r.Info().SessionStart)
	_, err = r.WriteAt(make([]byte, BlockSize), 6<<20)
	require.NoError(t, err)
	r = reopen(t, r)
	require.EqualValues(t, 23, r.Info().SessionStart, "trackers survive a restart")
	ext3, err := r.ChangedSince(23, 0, size)
	require.NoError(t, err)
	require.Equal(t, []Extent{{Offset: 6 << 20, Length: 1 << cbtRegionShift}}, ext3)
	ext3, err = r.ChangedSince(3, 0, size)
	require.ErrorIs(t, err, ErrNotFound, "dropped before the restart, still dropped")
	require.NoError(t, r.SetGeneration(25)) // odd to odd: the session goes on
	require.EqualValues(t, 23, r.Info().SessionStart)
	require.NoError(t, r.SetGeneration(26))
	require.NoError(t, r.SetGeneration(27))
	require.NoError(t, r.Snapshot("s", nil))
	require.EqualValues(t, 27, r.Info().SessionStart)
	require.NoError(t, r.Revert("s"))
	require.Zero(t, r.Info().SessionStart, "a revert replaces the head")
}

// requireTracked fails unless every block where got differs from base lies
// in a region r reports changed since gen.
func requireTracked(t *testing.T, r *Replica, gen uint64, got, base []byte) {
	t.Helper()
	require.Equal(t, gen, r.Info().SessionStart)
	ext, err := r.ChangedSince(gen, 0, int64(len(got)))
	require.NoError(t, err)
	for off := 0; off < len(got); off += BlockSize {
		if bytes.Equal(got[off:off+BlockSize], base[off:off+BlockSize]) {
			continue
		}
		i, _ := slices.BinarySearchFunc(ext, int64(off), func(e Extent, o int64) int { return cmp.Compare(e.End(), o+1) })
		require.True(t, i < len(ext) && ext[i].Offset <= int64(off), "block at %d changed but its region is not reported (%v)", off, ext)
	}
}

// copyDir copies the files of a replica directory as they are: what a
// process killed at this point leaves behind (the page cache holds all it
// wrote).
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, e := range ents {
		if e.Name() == "replica.lock" || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600))
	}
	return dst
}

// TestChangeTrackingAfterCrashAndReboot: a replica left open by a process
// that died keeps its trackers when reopened in the same boot (the page
// cache holds every bitmap word written before the data), drops them when
// the machine rebooted since (the words may be lost: ChangedSince must
// report "not tracked", never "unchanged"), and keeps them after a clean
// close whatever the boot. Grow keeps them; Revert drops them for good.
func TestChangeTrackingAfterCrashAndReboot(t *testing.T) {
	const size = 8 << 20
	boot := "boot-1"
	old := cbtBootID
	cbtBootID = func() string { return boot }
	t.Cleanup(func() { cbtBootID = old })
	r := newTestReplica(t, size)
	require.NoError(t, r.SetGeneration(1))
	data := bytes.Repeat([]byte{7}, 3*BlockSize)
	_, err := r.WriteAt(data, 3<<20-BlockSize) // spans two regions
	require.NoError(t, err)
	want, err := r.ChangedSince(1, 0, size)
	require.NoError(t, err)
	require.Len(t, want, 1)

	open := func(dir string) *Replica {
		r, err := Open(dir)
		require.NoError(t, err)
		t.Cleanup(func() { r.Close() })
		return r
	}
	killed := copyDir(t, r.Dir())
	rebooted := copyDir(t, r.Dir())
	got, err := open(killed).ChangedSince(1, 0, size)
	require.NoError(t, err, "killed, same boot")
	require.Equal(t, want, got)

	boot = "boot-2"
	r2 := open(rebooted)
	require.Zero(t, r2.Info().SessionStart, "rebooted while open")
	_, err = r2.ChangedSince(1, 0, size)
	require.ErrorIs(t, err, ErrNotFound)

	r = reopen(t, r) // clean close, then open in boot-2
	got, err = r.ChangedSince(1, 0, size)
	require.NoError(t, err, "closed cleanly before the reboot")
	require.Equal(t, want, got)

	require.NoError(t, r.Grow(2*size))
	_, err = r.WriteAt(data, size+BlockSize)
	require.NoError(t, err)
	r = open(copyDir(t, r.Dir()))
	got, err = r.ChangedSince(1, 0, 2*size)
	require.NoError(t, err, "after a grow")
	require.Equal(t, append(want, Extent{Offset: size, Length: 1 << cbtRegionShift}), got)

	require.NoError(t, r.Snapshot("s", nil))
	require.NoError(t, r.Revert("s"))
	r = open(copyDir(t, r.Dir()))
	_, err = r.ChangedSince(1, 0, 2*size)
	require.ErrorIs(t, err, ErrNotFound, "a revert replaced the head")
	require.Zero(t, r.Info().SessionStart)
}

// BenchmarkTrackedWrite is the write path's cost of persisting change
// tracking: 4 KiB writes at random offsets of a 1 GiB volume whose tracker
// is fresh (every region's first write records it), persisted to
// replica.cbt or kept in memory only (the tracking before it persisted).
// Run the two interleaved: go test -run '^$' -bench TrackedWrite -count 6.
func BenchmarkTrackedWrite(b *testing.B) {
	for _, persisted := range []bool{true, false} {
		name := map[bool]string{true: "persisted", false: "memory"}[persisted]
		b.Run(name, func(b *testing.B) {
			const size = 1 << 30
			r := newTestReplica(b, size)
			if !persisted {
				r.cbt.close(nil, 0)
				r.cbt = nil
			}
			require.NoError(b, r.SetGeneration(1))
			rng := rand.New(rand.NewPCG(1, 2))
			buf := make([]byte, BlockSize)
			cpu := func() time.Duration {
				var ru syscall.Rusage
				require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
				return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			}
			b.ResetTimer()
			start := cpu()
			for range b.N {
				if _, err := r.WriteAt(buf, rng.Int64N(size/BlockSize)*BlockSize); err != nil {
					b.Fatal(err)
				}
			}
			// CPU time is less at the mercy of other load than wall time
			b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op")
		})
	}
}
