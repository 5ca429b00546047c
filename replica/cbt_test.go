package replica

import (
	"context"
	"math/rand/v2"
	"testing"

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
	r = reopen(t, r)
	require.Zero(t, r.Info().SessionStart, "trackers do not survive a restart")
	require.NoError(t, r.SetGeneration(25)) // odd to odd: still unknown
	require.Zero(t, r.Info().SessionStart)
	require.NoError(t, r.SetGeneration(26))
	require.NoError(t, r.SetGeneration(27))
	require.NoError(t, r.Snapshot("s", nil))
	require.EqualValues(t, 27, r.Info().SessionStart)
	require.NoError(t, r.Revert("s"))
	require.Zero(t, r.Info().SessionStart, "a revert replaces the head")
}
