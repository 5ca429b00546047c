package replica

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairnstore/cairn/replica/wire"
	"github.com/stretchr/testify/require"
)

func randBlocks(rng *rand.Rand, n int) []byte {
	p := make([]byte, n*BlockSize)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

// rebuild runs the engine's side of the rebuild protocol from src to dst
// (both clients) while writer mirrors live aligned writes to both.
func rebuild(t *testing.T, src, dst *Client, writes func()) {
	ctx := context.Background()
	// 1-2: "pause I/O", snapshot the source, reset the target
	n := fmt.Sprintf("rebuild-%d", rand.IntN(1e6))
	require.NoError(t, src.Snapshot(ctx, n, nil))
	si, err := src.Info(ctx)
	require.NoError(t, err)
	di, err := dst.Info(ctx)
	require.NoError(t, err)
	var keep []string
	for i, s := range di.Snapshots {
		if i < len(si.Snapshots) && si.Snapshots[i].Name == s.Name && !s.Incomplete {
			keep = append(keep, s.Name)
			continue
		}
		break
	}
	receive := si.Snapshots[len(keep):]
	require.NoError(t, dst.ResetForRebuild(ctx, keep, receive))
	di, err = dst.Info(ctx)
	require.NoError(t, err)
	require.True(t, di.Rebuilding)
	// 3: resume I/O to both while 4: copying the missing layers
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); writes() }()
	for _, s := range receive {
		_, err := CopyLayer(ctx, src, dst, s.Name, si.Size, 4)
		require.NoError(t, err)
	}
	wg.Wait()
	di, err = dst.Info(ctx)
	require.NoError(t, err)
	require.False(t, di.Rebuilding)
	require.Equal(t, len(si.Snapshots), len(di.Snapshots))
	for i := range si.Snapshots {
		require.Equal(t, si.Snapshots[i].Name, di.Snapshots[i].Name)
	}
}

func TestRebuildUnderLiveWrites(t *testing.T) {
	const size = 8 << 20
	const blocks = size / BlockSize
	rng := rand.New(rand.NewPCG(11, 12))
	src := newTestReplica(t, size)
	dst := newTestReplica(t, size)
	sc := dialTest(t, startServer(t, src))
	dc := dialTest(t, startServer(t, dst))
	ctx := context.Background()
	// history on the source: three snapshots and head data, with holes
	for s := 0; s < 3; s++ {
		for i := 0; i < 150; i++ {
			_, err := src.WriteAt(randBlocks(rng, 1+rng.IntN(8)), rng.Int64N(blocks-8)*BlockSize)
			require.NoError(t, err)
		}
		require.NoError(t, src.Trim(rng.Int64N(blocks-64)*BlockSize, 64*BlockSize))
		require.NoError(t, src.Snapshot(fmt.Sprintf("s%d", s), nil))
	}
	for i := 0; i < 100; i++ {
		_, err := src.WriteAt(randBlocks(rng, 1), rng.Int64N(blocks)*BlockSize)
		require.NoError(t, err)
	}
	// checksums of the source's snapshots travel with Info and are
	// verified by CommitLayer on the target
	for s := 0; s < 3; s++ {
		_, err := src.Checksum(fmt.Sprintf("s%d", s))
		require.NoError(t, err)
	}
	var live atomic.Int64
	mirror := func(seed uint64) func() {
		return func() {
			wr := rand.New(rand.NewPCG(seed, 99))
			for i := 0; i < 300; i++ {
				off := wr.Int64N(blocks-4) * BlockSize
				switch wr.IntN(10) {
				case 0:
					require.NoError(t, sc.Trim(ctx, off, 3*BlockSize))
					require.NoError(t, dc.Trim(ctx, off, 3*BlockSize))
				case 1:
					require.NoError(t, sc.WriteZeroes(ctx, off, 2*BlockSize))
					require.NoError(t, dc.WriteZeroes(ctx, off, 2*BlockSize))
				default:
					p := randBlocks(wr, 1+wr.IntN(4))
					_, err := sc.WriteAt(ctx, p, off)
					require.NoError(t, err)
					_, err = dc.WriteAt(ctx, p, off)
					require.NoError(t, err)
				}
				live.Add(1)
			}
		}
	}
	rebuild(t, sc, dc, mirror(1))
	require.EqualValues(t, 300, live.Load())
	requireSame(t, readAll(t, src, size), readAll(t, dst, size), "head after rebuild")
	for _, s := range src.Snapshots() {
		a, err := src.OpenSnapshot(s.Name)
		require.NoError(t, err)
		b, err := dst.OpenSnapshot(s.Name)
		require.NoError(t, err)
		requireSame(t, readAll(t, a, size), readAll(t, b, size), "snapshot "+s.Name)
		a.Close()
		b.Close()
		ca, err := src.Checksum(s.Name)
		require.NoError(t, err)
		cb, err := dst.Checksum(s.Name)
		require.NoError(t, err)
		require.Equal(t, ca, cb, "layer checksum of %s", s.Name)
	}

	// the target goes away, the source moves on; the returning target
	// copies only the layers it lacks
	for i := 0; i < 50; i++ {
		_, err := src.WriteAt(randBlocks(rng, 2), rng.Int64N(blocks-2)*BlockSize)
		require.NoError(t, err)
	}
	require.NoError(t, src.Snapshot("s3", nil))
	for i := 0; i < 50; i++ {
		_, err := dst.WriteAt(randBlocks(rng, 1), rng.Int64N(blocks)*BlockSize) // divergent, lost
		require.NoError(t, err)
	}
	before := len(dst.Snapshots())
	rebuild(t, sc, dc, mirror(2))
	require.Equal(t, before+2, len(dst.Snapshots()))
	requireSame(t, readAll(t, src, size), readAll(t, dst, size), "head after incremental rebuild")
	dst = reopen(t, dst)
	requireSame(t, readAll(t, src, size), readAll(t, dst, size), "target after reopen")
}

func TestRebuildGuards(t *testing.T) {
	const size = 64 * BlockSize
	r := newTestReplica(t, size)
	_, err := r.WriteAt(bytes.Repeat([]byte{1}, size), 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("a", nil))
	require.ErrorIs(t, r.ResetForRebuild([]string{"b"}, nil), ErrInvalid)
	require.ErrorIs(t, r.ResetForRebuild([]string{"a", "x"}, nil), ErrInvalid)
	require.ErrorIs(t, r.ResetForRebuild(nil, []SnapshotInfo{{Name: "x"}, {Name: "x"}}), ErrInvalid)
	require.NoError(t, r.ResetForRebuild([]string{"a"}, []SnapshotInfo{{Name: "b"}, {Name: "c", Checksum: "00"}}))
	require.True(t, r.Info().Rebuilding)
	_, err = r.WriteAt([]byte("x"), 10)
	require.ErrorIs(t, err, ErrUnaligned)
	_, err = r.WriteAt(bytes.Repeat([]byte{2}, BlockSize), 0)
	require.NoError(t, err)
	require.ErrorIs(t, r.RemoveSnapshot("a"), ErrRebuilding)
	require.ErrorIs(t, r.Revert("a"), ErrRebuilding)
	require.ErrorIs(t, r.WriteLayer("b", []byte("x"), 0), ErrInvalid)
	require.ErrorIs(t, r.WriteLayer("a", make([]byte, BlockSize), 0), ErrReadOnly)
	// layer data under a block the head rewrote stays hidden
	require.NoError(t, r.WriteLayer("b", bytes.Repeat([]byte{3}, 2*BlockSize), 0))
	require.NoError(t, r.CommitLayer("b"))
	require.ErrorIs(t, r.CommitLayer("c"), ErrCorrupt) // checksum mismatch
	require.True(t, r.Info().Rebuilding)
	got := make([]byte, 2*BlockSize)
	_, err = r.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, append(bytes.Repeat([]byte{2}, BlockSize), bytes.Repeat([]byte{3}, BlockSize)...), got)
	// an interrupted rebuild survives a restart as incomplete
	r = reopen(t, r)
	require.True(t, r.Info().Rebuilding)
	require.NoError(t, r.ResetForRebuild([]string{"a"}, nil))
	require.False(t, r.Info().Rebuilding)
}

// sparseSource returns a replica holding snapshot "s" of 4k data / 4k hole
// over the first half plus one extent of big blocks (> 4 MiB for big
// >= 1025) in the second, its checksum, and an empty target replica.
func sparseSource(t *testing.T, size int64, seed uint64, big int) (src, dst *Replica, sum string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed+1))
	src = newTestReplica(t, size)
	dst = newTestReplica(t, size)
	for b := int64(0); b < size/BlockSize/2; b += 2 {
		_, err := src.WriteAt(randBlocks(rng, 1), b*BlockSize)
		require.NoError(t, err)
	}
	_, err := src.WriteAt(randBlocks(rng, big), size/2+BlockSize)
	require.NoError(t, err)
	require.NoError(t, src.Snapshot("s", nil))
	sum, err = src.Checksum("s")
	require.NoError(t, err)
	return src, dst, sum
}

// TestRebuildSparse copies a 4k-data/4k-hole layer (plus some large
// extents) with CopyLayer, which packs many extents per WriteLayerExtents
// frame, and checks the copy block for block.
func TestRebuildSparse(t *testing.T) {
	const size = 16 << 20
	src, dst, sum := sparseSource(t, size, 21, 1200)
	sc := dialTest(t, startServer(t, src))
	dc := dialTest(t, startServer(t, dst))
	ctx := context.Background()
	require.NoError(t, dc.ResetForRebuild(ctx, nil, []SnapshotInfo{{Name: "s", Checksum: sum}}))
	n, err := CopyLayer(ctx, sc, dc, "s", size, 3)
	require.NoError(t, err)
	require.EqualValues(t, (size/BlockSize/4+1200)*BlockSize, n)
	require.False(t, dst.Info().Rebuilding)
	requireSame(t, readAll(t, src, size), readAll(t, dst, size), "sparse copy")
	ext, err := dst.LayerExtents("s", 0, size)
	require.NoError(t, err)
	want, err := src.LayerExtents("s", 0, size)
	require.NoError(t, err)
	require.Equal(t, want, ext)
}

func TestWriteLayerExtentsBadInput(t *testing.T) {
	const size = 64 * BlockSize
	r := newTestReplica(t, size)
	require.NoError(t, r.ResetForRebuild(nil, []SnapshotInfo{{Name: "b"}}))
	c := dialTest(t, startServer(t, r))
	ctx := context.Background()
	blk := bytes.Repeat([]byte{7}, 2*BlockSize)
	// wrong data length, unaligned, out of range, unknown layer, read-only
	require.ErrorIs(t, c.WriteLayerExtents(ctx, "b", []Extent{{0, BlockSize}}, blk), ErrInvalid)
	require.ErrorIs(t, c.WriteLayerExtents(ctx, "b", []Extent{{1, BlockSize}}, blk[:BlockSize]), ErrInvalid)
	require.ErrorIs(t, c.WriteLayerExtents(ctx, "b", []Extent{{size, BlockSize}}, blk[:BlockSize]), ErrOutOfRange)
	require.ErrorIs(t, c.WriteLayerExtents(ctx, "nope", []Extent{{0, BlockSize}}, blk[:BlockSize]), ErrNotFound)
	require.ErrorIs(t, r.WriteLayerExtents("b", []Extent{{0, BlockSize}, {-4096, BlockSize}}, blk), ErrOutOfRange)
	// a frame whose extent count exceeds its payload is refused, the
	// connection stays up
	bad := &wire.Request{Op: wire.OpWriteLayerExtents, Length: 1 << 40, Prefix: wire.LayerPrefix("b"), Data: blk}
	require.ErrorIs(t, c.run(ctx, bad), ErrInvalid)
	// nothing was written by the refused requests
	ext, err := r.LayerExtents("b", 0, size)
	require.NoError(t, err)
	require.Empty(t, ext)
	require.NoError(t, c.WriteLayerExtents(ctx, "b", []Extent{{0, BlockSize}, {8 * BlockSize, BlockSize}}, blk))
	ext, err = r.LayerExtents("b", 0, size)
	require.NoError(t, err)
	require.Equal(t, []Extent{{0, BlockSize}, {8 * BlockSize, BlockSize}}, ext)
}

// TestReadLayerDirectSeesUnflushedWrites: large aligned ReadLayer calls
// bypass the page cache; they still return data written (not yet flushed)
// through the page cache, holes as zeroes, and unaligned calls agree.
func TestReadLayerDirectSeesUnflushedWrites(t *testing.T) {
	const size = 4 << 20
	r := newTestReplica(t, size)
	rng := rand.New(rand.NewPCG(61, 62))
	want := make([]byte, size)
	data := randBlocks(rng, 100)
	_, err := r.WriteAt(data, 3*BlockSize)
	require.NoError(t, err)
	copy(want[3*BlockSize:], data)
	require.NoError(t, r.Snapshot("s", nil))
	data = randBlocks(rng, 10)
	_, err = r.WriteAt(data, 1<<20) // head, not flushed
	require.NoError(t, err)

	buf := make([]byte, 2<<20)
	require.True(t, directAligned(buf, 0))
	_, err = r.ReadLayer("s", buf, 0)
	require.NoError(t, err)
	require.Equal(t, want[:2<<20], buf)
	_, err = r.ReadLayer("", buf, 0)
	require.NoError(t, err)
	headWant := make([]byte, 2<<20)
	copy(headWant[1<<20:], data)
	require.Equal(t, headWant, buf)
	// unaligned (buffered path) reads agree
	_, err = r.ReadLayer("s", buf[1:BlockSize+1], 3*BlockSize)
	require.NoError(t, err)
	require.Equal(t, want[3*BlockSize:4*BlockSize], buf[1:BlockSize+1])
}

// TestWriteLayerExtentsFrameAlignsData: the server reads a
// WriteLayerExtents frame so that its data starts page-aligned (what lets
// the replica write a rebuild's data with O_DIRECT), for any name length
// and extent count, and the frame still parses to the same request.
func TestWriteLayerExtentsFrameAlignsData(t *testing.T) {
	for _, name := range []string{"", "s", "cairn-rebuild-1795648741993011219"} {
		for _, n := range []int{1, 3, 300} {
			ext := make([]Extent, n)
			for i := range ext {
				ext[i] = Extent{Offset: int64(i) * 2 * BlockSize, Length: BlockSize}
			}
			data := bytes.Repeat([]byte{0xa5}, n*BlockSize)
			payload := append(append(wire.LayerPrefix(name), encodeExtents(nil, ext)...), data...)
			frame := make([]byte, wire.ReqHeaderSize, wire.ReqHeaderSize+len(payload))
			h := wire.ReqHeader{Op: wire.OpWriteLayerExtents, Payload: uint32(len(payload)), ID: 7, Length: uint64(n)}
			h.Encode(frame)
			frame = append(frame, payload...)

			got, p, pooled, err := readRequest(bytes.NewReader(frame), make([]byte, wire.ReqHeaderSize))
			require.NoError(t, err)
			require.Equal(t, h, got)
			require.Equal(t, payload, p)
			gotName, rest, err := wire.SplitLayerPayload(p)
			require.NoError(t, err)
			require.Equal(t, name, gotName)
			gotExt, gotData, err := splitExtentsPayload(rest, uint64(n))
			require.NoError(t, err)
			require.Equal(t, ext, gotExt)
			require.True(t, directAligned(gotData, 0), "data of %d extents after name %q is not page aligned", n, name)
			putBuf(pooled)
		}
	}
}

// TestPullLayer: the target replica pulls a layer straight from the source
// (sparse data, a > 4 MiB extent, in two windows), commits it against the
// source's checksum and reads the same; bad pulls fail with clear errors.
func TestPullLayer(t *testing.T) {
	const size = 16 << 20
	src, dst, sum := sparseSource(t, size, 71, 1300)
	srcAddr := startServer(t, src)
	dc := dialTest(t, startServer(t, dst))
	ctx := context.Background()

	_, err := dc.PullLayer(ctx, "s", srcAddr, 0, size)
	require.ErrorIs(t, err, ErrNotFound, "no layer s being received yet")
	require.NoError(t, dc.ResetForRebuild(ctx, nil, []SnapshotInfo{{Name: "s", Checksum: sum}}))
	_, err = dc.PullLayer(ctx, "s", "unix:"+filepath.Join(t.TempDir(), "nobody.sock"), 0, size)
	require.ErrorIs(t, err, ErrUnreachable)
	_, err = dc.PullLayer(ctx, "s", srcAddr, size-BlockSize, 2*BlockSize)
	require.ErrorIs(t, err, ErrOutOfRange)
	// a source that does not know the token
	other := newTestReplica(t, size)
	otherAddr := "unix:" + filepath.Join(t.TempDir(), "o.sock")
	ln, err := Listen(otherAddr)
	require.NoError(t, err)
	octx, ocancel := context.WithCancel(ctx)
	odone := make(chan error, 1)
	go func() { odone <- Serve(octx, ln, other, "another-token") }()
	t.Cleanup(func() { ocancel(); <-odone })
	_, err = dc.PullLayer(ctx, "s", otherAddr, 0, size)
	require.ErrorIs(t, err, ErrUnreachable)

	var n int64
	for _, w := range [][2]int64{{0, size / 2}, {size / 2, size / 2}} {
		k, err := dc.PullLayer(ctx, "s", srcAddr, w[0], w[1])
		require.NoError(t, err)
		n += k
	}
	require.EqualValues(t, (size/BlockSize/4+1300)*BlockSize, n)
	require.NoError(t, dc.CommitLayer(ctx, "s"))
	require.False(t, dst.Info().Rebuilding)
	requireSame(t, readAll(t, src, size), readAll(t, dst, size), "pulled copy")
}
