package replica

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"

	"github.com/cairnstore/cairn/replica/wire"
)

const (
	// copyWindow is the range of one LayerExtents query during CopyLayer.
	copyWindow = 256 << 20
	// copyGap is the largest hole CopyLayer reads through rather than
	// splitting a read: reading a short hole is cheaper than a frame.
	copyGap = 64 << 10
)

// copySpan is one ReadLayer request: [off, end) covering ext.
type copySpan struct {
	off, end int64
	ext      []Extent
}

// copyBatch is one WriteLayerExtents frame: its extents (in spans read
// from the source) and their data size.
type copyBatch struct {
	spans []copySpan
	ext   []Extent
	bytes int64
}

// add appends the piece [off, off+n) to the batch, extending the last
// read span when the piece is near it.
func (b *copyBatch) add(off, n int64) {
	b.ext = append(b.ext, Extent{Offset: off, Length: n})
	b.bytes += n
	if k := len(b.spans) - 1; k >= 0 && off-b.spans[k].end <= copyGap && off+n-b.spans[k].off <= MaxIO {
		b.spans[k].end = off + n
		b.spans[k].ext = append(b.spans[k].ext, Extent{Offset: off, Length: n})
		return
	}
	b.spans = append(b.spans, copySpan{off: off, end: off + n, ext: []Extent{{Offset: off, Length: n}}})
}

// room is how many data bytes one more extent may add to the frame.
func (b *copyBatch) room() int64 {
	return int64(MaxIO) - 16*int64(len(b.ext)+1) - b.bytes
}

// CopyLayer streams the allocated extents of snapshot layer from src into
// the same (Incomplete) layer of dst and commits it there: the data-moving
// step of a rebuild. Extents are packed into frames of up to MaxIO bytes:
// the source is read in spans (short holes are read through rather than
// costing a request each) and each frame's extents are written with one
// WriteLayerExtents, so sparse data is not bound by requests per second.
// Up to parallel frames are in flight (4 if parallel <= 0). It returns the
// number of bytes copied. size is the volume size.
func CopyLayer(ctx context.Context, src, dst *Client, layer string, size int64, parallel int) (int64, error) {
	copied, err := copyRange(ctx, src, dst, layer, 0, size, parallel)
	if err != nil {
		return copied, err
	}
	if err := dst.CommitLayer(ctx, layer); err != nil {
		return copied, fmt.Errorf("commit layer %q: %w", layer, err)
	}
	return copied, nil
}

// layerSink receives a layer's extents: a remote replica (Client) or, when
// a replica pulls a layer itself, the local one.
type layerSink interface {
	WriteLayerExtents(ctx context.Context, layer string, extents []Extent, data []byte) error
}

// localSink writes into a replica in this process.
type localSink struct{ r *Replica }

func (l localSink) WriteLayerExtents(_ context.Context, layer string, extents []Extent, data []byte) error {
	return l.r.WriteLayerExtents(layer, extents, data)
}

// copyRange copies the allocated extents of layer within [off, end) from
// src to dst (see CopyLayer) without committing.
func copyRange(ctx context.Context, src *Client, dst layerSink, layer string, off, end int64, parallel int) (int64, error) {
	if parallel <= 0 {
		parallel = 4
	}
	if len(layer) > 255 {
		return 0, fmt.Errorf("%w: layer name too long", ErrInvalid)
	}
	name := wire.LayerPrefix(layer)
	var copied int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	run := func(b *copyBatch) {
		g.Go(func() error { return copyFrame(gctx, src, dst, layer, name, b) })
	}
	for w := off; w < end && gctx.Err() == nil; w += copyWindow {
		ext, err := src.LayerExtents(gctx, layer, w, min(copyWindow, end-w))
		if err != nil {
			g.Wait()
			return copied, fmt.Errorf("layer extents of %q: %w", layer, err)
		}
		b := &copyBatch{}
		for _, e := range ext {
			for off := e.Offset; off < e.End(); {
				room := b.room() &^ (BlockSize - 1)
				if room <= 0 {
					run(b)
					b = &copyBatch{}
					continue
				}
				n := min(e.End()-off, room)
				b.add(off, n)
				copied += n
				off += n
			}
		}
		if len(b.ext) > 0 {
			run(b)
		}
	}
	if err := g.Wait(); err != nil {
		return copied, err
	}
	return copied, ctx.Err()
}

// copyFrame reads one batch's spans from src (pipelined) and writes its
// extents to dst in one WriteLayerExtents frame.
func copyFrame(ctx context.Context, src *Client, dst layerSink, layer string, name []byte, b *copyBatch) error {
	data := getBuf(int(b.bytes))
	defer putBuf(data)
	bufs := make([][]byte, len(b.spans))
	defer func() {
		for _, buf := range bufs {
			putBuf(buf)
		}
	}()
	reqs := make([]*wire.Request, len(b.spans))
	for i, s := range b.spans {
		bufs[i] = getBuf(int(s.end - s.off))
		reqs[i] = &wire.Request{Op: wire.OpReadLayer, Off: uint64(s.off), Length: uint64(s.end - s.off), Prefix: name, Data: bufs[i]}
	}
	// run returns once every read is done: the buffers are in use until then
	if err := src.run(ctx, reqs...); err != nil {
		return fmt.Errorf("read layer %q at %d: %w", layer, b.spans[0].off, err)
	}
	var d int64
	for i, s := range b.spans {
		for _, e := range s.ext {
			d += int64(copy(data[d:], bufs[i][e.Offset-s.off:e.End()-s.off]))
		}
	}
	if err := dst.WriteLayerExtents(ctx, layer, b.ext, data); err != nil {
		return fmt.Errorf("write layer %q at %d: %w", layer, b.ext[0].Offset, err)
	}
	return nil
}
