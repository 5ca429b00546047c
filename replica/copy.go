package replica

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"
)

// copyWindow is the range of one LayerExtents query during CopyLayer.
const copyWindow = 256 << 20

// CopyLayer streams the allocated extents of snapshot layer from src into
// the same (Incomplete) layer of dst and commits it there: the data-moving
// step of a rebuild. It keeps up to parallel reads/writes in flight (4 if
// parallel <= 0) and returns the number of bytes copied. size is the
// volume size.
func CopyLayer(ctx context.Context, src, dst *Client, layer string, size int64, parallel int) (int64, error) {
	if parallel <= 0 {
		parallel = 4
	}
	var copied int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for w := int64(0); w < size; w += copyWindow {
		ext, err := src.LayerExtents(gctx, layer, w, min(copyWindow, size-w))
		if err != nil {
			g.Wait()
			return copied, fmt.Errorf("layer extents of %q: %w", layer, err)
		}
		for _, e := range ext {
			for off := e.Offset; off < e.End(); off += MaxIO {
				off, n := off, min(int64(MaxIO), e.End()-off)
				copied += n
				g.Go(func() error {
					buf := getBuf(int(n))
					defer putBuf(buf)
					if _, err := src.ReadLayer(gctx, layer, buf, off); err != nil {
						return fmt.Errorf("read layer %q at %d: %w", layer, off, err)
					}
					if err := dst.WriteLayer(gctx, layer, buf, off); err != nil {
						return fmt.Errorf("write layer %q at %d: %w", layer, off, err)
					}
					return nil
				})
			}
		}
		if gctx.Err() != nil {
			break
		}
	}
	if err := g.Wait(); err != nil {
		return copied, err
	}
	if err := dst.CommitLayer(ctx, layer); err != nil {
		return copied, fmt.Errorf("commit layer %q: %w", layer, err)
	}
	return copied, nil
}
