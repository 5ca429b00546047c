package backupstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPins: a live pin stops Delete (the backup stays listed, so GC keeps
// its blocks); a pin that expired, or was removed, does not; a read-only
// store can pin.
func TestPins(t *testing.T) {
	ctx := ctxT(t)
	tt := newFileTarget(t)
	s := tt.open(t)
	img := newMemImage(testSize)
	fillMixed(img, 21)
	b1, err := s.CreateBackup(ctx, BackupOptions{Volume: "vol", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)
	b2, err := s.CreateBackup(ctx, BackupOptions{Volume: "vol", Source: img, BlockSize: testBlockSize})
	require.NoError(t, err)

	ro := tt.open(t, func(o *Options) { o.ReadOnly = true })
	require.NoError(t, ro.Pin(ctx, "vol", b1.ID, "site-b", time.Minute))
	_, err = s.Delete(ctx, "vol", b1.ID)
	require.ErrorIs(t, err, ErrPinned)
	_, err = s.Get(ctx, "vol", b1.ID)
	require.NoError(t, err, "a pinned backup stays listed")
	pins, err := s.Pins(ctx, "vol")
	require.NoError(t, err)
	require.Len(t, pins, 1)
	require.Equal(t, "site-b", pins[0].Holder)

	require.NoError(t, ro.Unpin(ctx, "vol", b1.ID, "site-b"))
	_, err = s.Delete(ctx, "vol", b1.ID)
	require.NoError(t, err)

	require.NoError(t, ro.Pin(ctx, "vol", b2.ID, "site-b", -time.Hour)) // a site gone long ago
	_, err = s.Delete(ctx, "vol", b2.ID)
	require.NoError(t, err, "an expired pin holds nothing")
}
