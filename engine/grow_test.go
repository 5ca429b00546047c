package engine

import (
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGrowOnline grows a volume of three replicas while a writer runs, with
// one replica away: writes past the old end reach every replica and read
// back, and the replica that missed the grow, rebuilt afterwards, gets the
// full size; so does a new replica created at the old size.
func TestGrowOnline(t *testing.T) {
	const size, grown = 4 << 20, 8 << 20
	rs := newTestReplicas(t, 3, size)
	v := openTestVolume(t, size, rs)
	m := &model{data: make([]byte, size)}
	randomWriter(t, v, m, 7, 4)(200)
	require.NoError(t, v.Snapshot(bg, "before", nil))
	rs[2].stop()

	require.ErrorIs(t, v.Grow(bg, size-4096), ErrShrink)
	require.ErrorIs(t, v.Grow(bg, size+512), ErrInvalid)
	require.ErrorIs(t, v.WriteAt(bg, []byte{1}, size), ErrOutOfRange)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		randomWriter(t, v, m, 8, 4)(300) // the old range, during the grow
	}()
	require.NoError(t, v.Grow(bg, grown))
	wg.Wait()
	require.Equal(t, int64(grown), v.Size())
	require.Equal(t, int64(grown), v.Status().Size)
	require.NoError(t, v.Grow(bg, grown), "same size: no-op")

	m.mu.Lock()
	m.data = append(m.data, make([]byte, grown-size)...)
	m.mu.Unlock()
	edge := []byte(strings.Repeat("across the old end ", 500))
	require.NoError(t, v.WriteAt(bg, edge, size-1000))
	m.write(edge, size-1000)
	randomWriter(t, v, m, 9, 4)(200) // the whole grown range
	require.NoError(t, v.Snapshot(bg, "after", nil))
	got := make([]byte, grown)
	require.NoError(t, v.ReadAt(bg, got, 0))
	requireSame(t, m.data, got, "volume after grow")
	for _, r := range rs[:2] {
		r.size = grown
		requireSame(t, m.data, r.contents(), r.addr)
	}

	// the replica that was away comes back at the old size
	rs[2].start()
	res, err := v.Rebuild(bg, rs[2].addr)
	require.NoError(t, err)
	require.False(t, res.CaughtUp, "a snapshot was taken while it was away")
	rs[2].size = grown
	require.Equal(t, int64(grown), rs[2].r.Size())
	requireSame(t, m.data, rs[2].contents(), "rebuilt after the grow")
	snaps := rs[2].r.Snapshots()
	require.Equal(t, "before", snaps[0].Name)
	require.Equal(t, int64(size), snaps[0].Size, "an older snapshot keeps its size")

	fresh := newTestReplicas(t, 1, size)
	_, err = v.Rebuild(bg, fresh[0].addr)
	require.NoError(t, err)
	fresh[0].size = grown
	requireSame(t, m.data, fresh[0].contents(), "new replica after the grow")
	require.Equal(t, Healthy, v.Status().Robustness)
}
