package engine

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cairnstore/cairn/replica"
)

// ReplicaDialer returns a Dialer for replica servers that authenticates
// with the volume's token.
func ReplicaDialer(token string) Dialer {
	return func(ctx context.Context, addr string) (Replica, error) {
		c, err := replica.Dial(ctx, addr, token)
		if err != nil {
			return nil, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			c.Close()
			return nil, err
		}
		d, err := dialData(ctx, addr, token, 0)
		if err != nil {
			c.Close()
			return nil, err
		}
		rc := &replicaClient{c: c, d: d}
		rc.size.Store(info.Size)
		return rc, nil
	}
}

// replicaClient adapts *replica.Client (control operations) and a dataConn
// (I/O) to Replica, translating the replica's sentinel errors into the
// engine's.
type replicaClient struct {
	c    *replica.Client
	d    *dataConn
	size atomic.Int64 // the replica's volume size, raised by Grow
}

// submit implements asyncReplica.
func (r *replicaClient) submit(l *ioLeg) { r.d.submit(l) }

// setIOTimeout implements asyncReplica.
func (r *replicaClient) setIOTimeout(d time.Duration) { r.d.setTimeout(d) }

func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, replica.ErrExists):
		return fmt.Errorf("%w: %w", ErrSnapshotExists, err)
	case errors.Is(err, replica.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, replica.ErrInvalid):
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	case errors.Is(err, replica.ErrShrink):
		return fmt.Errorf("%w: %w", ErrShrink, err)
	case errors.Is(err, replica.ErrOutOfRange):
		return fmt.Errorf("%w: %w", ErrOutOfRange, err)
	}
	return err
}

func (r *replicaClient) ReadAt(ctx context.Context, p []byte, off int64) error {
	return mapErr(r.d.do(ctx, rpOpRead, "", p, off, int64(len(p))))
}

func (r *replicaClient) WriteAt(ctx context.Context, p []byte, off int64) error {
	return mapErr(r.d.do(ctx, rpOpWrite, "", p, off, int64(len(p))))
}

func (r *replicaClient) Flush(ctx context.Context) error {
	return mapErr(r.d.do(ctx, rpOpFlush, "", nil, 0, 0))
}

func (r *replicaClient) Trim(ctx context.Context, off, length int64) error {
	return mapErr(r.d.do(ctx, rpOpTrim, "", nil, off, length))
}

func (r *replicaClient) WriteZeroes(ctx context.Context, off, length int64) error {
	return mapErr(r.d.do(ctx, rpOpZeroes, "", nil, off, length))
}

func (r *replicaClient) Ping(ctx context.Context) error {
	return mapErr(r.d.do(ctx, rpOpPing, "", nil, 0, 0))
}

func (r *replicaClient) Info(ctx context.Context) (ReplicaInfo, error) {
	in, err := r.c.Info(ctx)
	if err != nil {
		return ReplicaInfo{}, mapErr(err)
	}
	out := ReplicaInfo{Size: in.Size, Generation: in.Generation, Rebuilding: in.Rebuilding, SessionStart: in.SessionStart}
	for _, s := range in.Snapshots {
		out.Snapshots = append(out.Snapshots, SnapshotInfo{
			Name: s.Name, Labels: s.Labels, Created: s.Created, Incomplete: s.Incomplete, Size: s.Size, checksum: s.Checksum,
		})
	}
	return out, nil
}

func (r *replicaClient) SetGeneration(ctx context.Context, gen uint64) error {
	return mapErr(r.c.SetGeneration(ctx, gen))
}

func (r *replicaClient) Grow(ctx context.Context, size int64) error {
	if err := r.c.Grow(ctx, size); err != nil {
		return mapErr(err)
	}
	r.size.Store(size)
	return nil
}

func (r *replicaClient) Snapshot(ctx context.Context, name string, labels map[string]string) error {
	return mapErr(r.c.Snapshot(ctx, name, labels))
}

func (r *replicaClient) Revert(ctx context.Context, name string) error {
	return mapErr(r.c.Revert(ctx, name))
}

func (r *replicaClient) RemoveSnapshot(ctx context.Context, name string) error {
	return mapErr(r.c.RemoveSnapshot(ctx, name))
}

func (r *replicaClient) LayerExtents(ctx context.Context, layer string) ([]Extent, error) {
	ext, err := r.c.LayerExtents(ctx, layer, 0, r.size.Load())
	return fromReplicaExtents(ext), mapErr(err)
}

// fromReplicaExtents converts the replica package's extents.
func fromReplicaExtents(ext []replica.Extent) []Extent {
	if ext == nil {
		return nil
	}
	out := make([]Extent, len(ext))
	for i, e := range ext {
		out[i] = Extent{Offset: e.Offset, Length: e.Length}
	}
	return out
}

func (r *replicaClient) ReadLayer(ctx context.Context, layer string, p []byte, off int64) error {
	return mapErr(r.d.do(ctx, rpOpReadLayer, layer, p, off, int64(len(p))))
}

func (r *replicaClient) ResetForRebuild(ctx context.Context, keep []string, receive []SnapshotInfo) error {
	rs := make([]replica.SnapshotInfo, len(receive))
	for i, s := range receive {
		rs[i] = replica.SnapshotInfo{Name: s.Name, Labels: s.Labels, Created: s.Created, Size: s.Size, Checksum: s.checksum}
	}
	return mapErr(r.c.ResetForRebuild(ctx, keep, rs))
}

func (r *replicaClient) WriteLayer(ctx context.Context, layer string, p []byte, off int64) error {
	return mapErr(r.d.do(ctx, rpOpWriteLayer, layer, p, off, int64(len(p))))
}

func (r *replicaClient) WriteLayerExtents(ctx context.Context, layer string, extents []Extent, data []byte) error {
	ext := make([]replica.Extent, len(extents))
	for i, e := range extents {
		ext[i] = replica.Extent{Offset: e.Offset, Length: e.Length}
	}
	return mapErr(r.c.WriteLayerExtents(ctx, layer, ext, data))
}

// ChangedSince returns the regions of the head changed since generation
// gen (replica changed-block tracking).
func (r *replicaClient) ChangedSince(ctx context.Context, gen uint64, size int64) ([]Extent, error) {
	ext, err := r.c.ChangedSince(ctx, gen, size)
	return fromReplicaExtents(ext), mapErr(err)
}

// PullLayer has the replica copy a range of layer straight from the
// replica at source (see replica.Client.PullLayer).
func (r *replicaClient) PullLayer(ctx context.Context, layer, source string, off, length int64) (int64, error) {
	n, err := r.c.PullLayer(ctx, layer, source, off, length)
	if errors.Is(err, replica.ErrUnreachable) || errors.Is(err, replica.ErrUnknownOp) {
		err = fmt.Errorf("%w: %w", errPullUnavailable, err)
	}
	return n, mapErr(err)
}

func (r *replicaClient) CommitLayer(ctx context.Context, layer string) error {
	return mapErr(r.c.CommitLayer(ctx, layer))
}

func (r *replicaClient) Close() error {
	r.d.Close()
	return r.c.Close()
}
