package engine

import (
	"context"
	"errors"
	"fmt"

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
		return &replicaClient{c: c, size: info.Size}, nil
	}
}

// replicaClient adapts *replica.Client to Replica, translating the
// replica's sentinel errors into the engine's.
type replicaClient struct {
	c    *replica.Client
	size int64
}

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
	case errors.Is(err, replica.ErrOutOfRange):
		return fmt.Errorf("%w: %w", ErrOutOfRange, err)
	}
	return err
}

func (r *replicaClient) ReadAt(ctx context.Context, p []byte, off int64) error {
	_, err := r.c.ReadAt(ctx, p, off)
	return mapErr(err)
}

func (r *replicaClient) WriteAt(ctx context.Context, p []byte, off int64) error {
	_, err := r.c.WriteAt(ctx, p, off)
	return mapErr(err)
}

func (r *replicaClient) Flush(ctx context.Context) error { return mapErr(r.c.Flush(ctx)) }

func (r *replicaClient) Trim(ctx context.Context, off, length int64) error {
	return mapErr(r.c.Trim(ctx, off, length))
}

func (r *replicaClient) WriteZeroes(ctx context.Context, off, length int64) error {
	return mapErr(r.c.WriteZeroes(ctx, off, length))
}

func (r *replicaClient) Ping(ctx context.Context) error { return mapErr(r.c.Ping(ctx)) }

func (r *replicaClient) Info(ctx context.Context) (ReplicaInfo, error) {
	in, err := r.c.Info(ctx)
	if err != nil {
		return ReplicaInfo{}, mapErr(err)
	}
	out := ReplicaInfo{Size: in.Size, Generation: in.Generation, Rebuilding: in.Rebuilding}
	for _, s := range in.Snapshots {
		out.Snapshots = append(out.Snapshots, SnapshotInfo{
			Name: s.Name, Labels: s.Labels, Created: s.Created, Incomplete: s.Incomplete, checksum: s.Checksum,
		})
	}
	return out, nil
}

func (r *replicaClient) SetGeneration(ctx context.Context, gen uint64) error {
	return mapErr(r.c.SetGeneration(ctx, gen))
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
	ext, err := r.c.LayerExtents(ctx, layer, 0, r.size)
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]Extent, len(ext))
	for i, e := range ext {
		out[i] = Extent{Offset: e.Offset, Length: e.Length}
	}
	return out, nil
}

func (r *replicaClient) ReadLayer(ctx context.Context, layer string, p []byte, off int64) error {
	_, err := r.c.ReadLayer(ctx, layer, p, off)
	return mapErr(err)
}

func (r *replicaClient) ResetForRebuild(ctx context.Context, keep []string, receive []SnapshotInfo) error {
	rs := make([]replica.SnapshotInfo, len(receive))
	for i, s := range receive {
		rs[i] = replica.SnapshotInfo{Name: s.Name, Labels: s.Labels, Created: s.Created, Checksum: s.checksum}
	}
	return mapErr(r.c.ResetForRebuild(ctx, keep, rs))
}

func (r *replicaClient) WriteLayer(ctx context.Context, layer string, p []byte, off int64) error {
	return mapErr(r.c.WriteLayer(ctx, layer, p, off))
}

func (r *replicaClient) CommitLayer(ctx context.Context, layer string) error {
	return mapErr(r.c.CommitLayer(ctx, layer))
}

func (r *replicaClient) Close() error { return r.c.Close() }
