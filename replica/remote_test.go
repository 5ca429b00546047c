package replica

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRemoteSnapshotMatchesLocal: reading snapshots through a running
// server (layer extents + layer reads) gives exactly the local view, for
// aligned and unaligned ranges, with data overwritten, trimmed to holes and
// left in lower layers; Diff agrees too.
func TestRemoteSnapshotMatchesLocal(t *testing.T) {
	const size = 8 << 20
	r := newTestReplica(t, size)
	rng := rand.New(rand.NewPCG(7, 7))
	write := func(n int) {
		for range n {
			buf := make([]byte, (1+rng.IntN(16))*BlockSize)
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			off := int64(rng.IntN(size/BlockSize-16)) * BlockSize
			_, err := r.WriteAt(buf, off)
			require.NoError(t, err)
		}
	}
	write(40)
	require.NoError(t, r.Snapshot("s1", nil))
	write(40)
	require.NoError(t, r.Trim(2<<20, 64<<10))
	require.NoError(t, r.Snapshot("s2", nil))
	write(20) // head only

	c := dialTest(t, startServer(t, r))
	remote := NewRemote(context.Background(), c)
	for _, name := range []string{"s1", "s2"} {
		local, err := r.OpenSnapshot(name)
		require.NoError(t, err)
		want := make([]byte, size)
		_, err = local.ReadAt(want, 0)
		require.NoError(t, err)
		require.NoError(t, local.Close())

		rs, err := remote.OpenSnapshot(name)
		require.NoError(t, err)
		require.Equal(t, int64(size), rs.Size())
		got := make([]byte, size)
		for off := 0; off < size; off += 1 << 20 {
			_, err := rs.ReadAt(got[off:off+1<<20], int64(off))
			require.NoError(t, err)
		}
		require.True(t, bytes.Equal(want, got), "snapshot %s differs", name)
		for range 50 {
			off := rng.IntN(size - 70000)
			n := 1 + rng.IntN(70000)
			p := make([]byte, n)
			_, err := rs.ReadAt(p, int64(off))
			require.NoError(t, err)
			require.True(t, bytes.Equal(want[off:off+n], p), "unaligned [%d,+%d) of %s", off, n, name)
		}
	}
	wantDiff, err := r.Diff("s1", "s2")
	require.NoError(t, err)
	gotDiff, err := remote.Diff("s1", "s2")
	require.NoError(t, err)
	require.Equal(t, wantDiff, gotDiff)

	_, err = remote.OpenSnapshot("nope")
	require.ErrorIs(t, err, ErrNotFound)
}

func TestSplitExtent(t *testing.T) {
	held := []Extent{{Offset: 0, Length: 10}, {Offset: 20, Length: 10}, {Offset: 40, Length: 5}}
	in, out := splitExtent(Extent{Offset: 5, Length: 30}, held)
	require.Equal(t, []Extent{{Offset: 5, Length: 5}, {Offset: 20, Length: 10}}, in)
	require.Equal(t, []Extent{{Offset: 10, Length: 10}, {Offset: 30, Length: 5}}, out)
	in, out = splitExtent(Extent{Offset: 10, Length: 10}, held)
	require.Empty(t, in)
	require.Equal(t, []Extent{{Offset: 10, Length: 10}}, out)
}
