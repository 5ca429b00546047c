package engine

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cairnstore/cairn/replica"
	"github.com/cairnstore/cairn/replica/wire"
)

// Replica is the engine's connection to one replica server: the I/O path,
// the control operations, and both sides of a rebuild. It holds two
// replica.Client connections: one for I/O, whose requests the fast path
// submits without waiting (Volume.Submit) and which fails when a request
// waits longer than the I/O timeout, and one for control operations,
// which may run long (rebuild copies, checksums) and are bounded by their
// contexts. The replica's sentinel errors are translated into the
// engine's (mapErr).
type Replica struct {
	ctl  *replica.Client
	data *replica.Client
	size atomic.Int64 // the replica's volume size, raised by Grow
}

// Dialer connects to a replica by address.
type Dialer func(ctx context.Context, addr string) (*Replica, error)

// ReplicaDialer returns a Dialer for replica servers that authenticates
// with the volume's token.
func ReplicaDialer(token string) Dialer {
	return func(ctx context.Context, addr string) (*Replica, error) {
		c, err := replica.Dial(ctx, addr, token)
		if err != nil {
			return nil, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			c.Close()
			return nil, err
		}
		d, err := replica.Dial(ctx, addr, token)
		if err != nil {
			c.Close()
			return nil, err
		}
		d.SetIOTimeout(defaultIOTimeout)
		r := &Replica{ctl: c, data: d}
		r.size.Store(info.Size)
		return r, nil
	}
}

// defaultIOTimeout is the I/O timeout of a replica until the volume sets
// its own.
const defaultIOTimeout = 10 * time.Second

// setIOTimeout sets the I/O timeout (d <= 0: the default).
func (r *Replica) setIOTimeout(d time.Duration) {
	if d <= 0 {
		d = defaultIOTimeout
	}
	r.data.SetIOTimeout(d)
}

// submit sends one leg of the fast path on the I/O connection.
func (r *Replica) submit(l *ioLeg) { r.data.Submit(&l.Request) }

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

// ioCtx is the context of a request on the I/O connection: once sent, a
// request is not abandoned when ctx ends (that would close the connection
// to free the caller's buffer, and drop a healthy replica); the I/O
// timeout's watchdog bounds it instead.
func ioCtx(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

func (r *Replica) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := r.data.ReadAt(ioCtx(ctx), p, off)
	return mapErr(err)
}

func (r *Replica) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := r.data.WriteAt(ioCtx(ctx), p, off)
	return mapErr(err)
}

func (r *Replica) Flush(ctx context.Context) error { return mapErr(r.data.Flush(ctx)) }

func (r *Replica) Trim(ctx context.Context, off, length int64) error {
	return mapErr(r.data.Trim(ctx, off, length))
}

func (r *Replica) WriteZeroes(ctx context.Context, off, length int64) error {
	return mapErr(r.data.WriteZeroes(ctx, off, length))
}

func (r *Replica) Ping(ctx context.Context) error { return mapErr(r.data.Ping(ctx)) }

// Info reports the replica's size, generation and chain.
func (r *Replica) Info(ctx context.Context) (replica.Info, error) {
	in, err := r.ctl.Info(ctx)
	return in, mapErr(err)
}

// SetGeneration durably stores the generation (never lower).
func (r *Replica) SetGeneration(ctx context.Context, gen uint64) error {
	return mapErr(r.ctl.SetGeneration(ctx, gen))
}

// Grow raises the replica's volume size (never lower; the same size is a
// no-op).
func (r *Replica) Grow(ctx context.Context, size int64) error {
	if err := r.ctl.Grow(ctx, size); err != nil {
		return mapErr(err)
	}
	r.size.Store(size)
	return nil
}

func (r *Replica) Snapshot(ctx context.Context, name string, labels map[string]string) error {
	return mapErr(r.ctl.Snapshot(ctx, name, labels))
}

func (r *Replica) Revert(ctx context.Context, name string) error {
	return mapErr(r.ctl.Revert(ctx, name))
}

func (r *Replica) RemoveSnapshot(ctx context.Context, name string) error {
	return mapErr(r.ctl.RemoveSnapshot(ctx, name))
}

// LayerExtents returns the allocated extents of one snapshot layer (only
// what that layer itself holds): the rebuild source side.
func (r *Replica) LayerExtents(ctx context.Context, layer string) ([]replica.Extent, error) {
	ext, err := r.ctl.LayerExtents(ctx, layer, 0, r.size.Load())
	return ext, mapErr(err)
}

// ReadLayer reads one layer's data (rebuild source side).
func (r *Replica) ReadLayer(ctx context.Context, layer string, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := r.data.ReadLayer(ioCtx(ctx), layer, p, off)
	return mapErr(err)
}

// ResetForRebuild prepares a rebuild target: keep the oldest committed
// layers named in keep (a prefix of its chain shared with the source),
// replace the rest with empty incomplete layers as listed in receive and
// an empty head that takes live (block-aligned) writes at once.
func (r *Replica) ResetForRebuild(ctx context.Context, keep []string, receive []replica.SnapshotInfo) error {
	return mapErr(r.ctl.ResetForRebuild(ctx, keep, receive))
}

// WriteLayer writes into a layer being received.
func (r *Replica) WriteLayer(ctx context.Context, layer string, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return mapErr(r.data.WriteLayer(ioCtx(ctx), layer, p, off))
}

// WriteLayerExtents writes many block-aligned extents of a layer being
// received; data holds their bytes back to back.
func (r *Replica) WriteLayerExtents(ctx context.Context, layer string, extents []replica.Extent, data []byte) error {
	return mapErr(r.ctl.WriteLayerExtents(ctx, layer, extents, data))
}

// ChangedSince returns the regions of the head changed since generation
// gen (replica changed-block tracking).
func (r *Replica) ChangedSince(ctx context.Context, gen uint64, size int64) ([]replica.Extent, error) {
	ext, err := r.ctl.ChangedSince(ctx, gen, size)
	return ext, mapErr(err)
}

// PullLayer has the replica copy a range of layer straight from the
// replica at source (see replica.Client.PullLayer).
func (r *Replica) PullLayer(ctx context.Context, layer, source string, off, length int64) (int64, error) {
	n, err := r.ctl.PullLayer(ctx, layer, source, off, length)
	if errors.Is(err, replica.ErrUnreachable) || errors.Is(err, replica.ErrUnknownOp) {
		err = fmt.Errorf("%w: %w", errPullUnavailable, err)
	}
	return n, mapErr(err)
}

// CommitLayer seals a received layer.
func (r *Replica) CommitLayer(ctx context.Context, layer string) error {
	return mapErr(r.ctl.CommitLayer(ctx, layer))
}

func (r *Replica) Close() error {
	r.data.Close()
	return r.ctl.Close()
}

// ioLeg is one replica request of the fast path (submit.go): a request
// on the replica's I/O connection, completed through its fanout.
type ioLeg struct {
	wire.Request
	m *member
	f *fanout
}

// Done implements wire.Owner: on the connection's reader goroutine (or the
// one that failed the connection); it must not block on Volume.mu.
func (l *ioLeg) Done(_ *wire.Request, err error) { l.f.ioDone(l, mapErr(err)) }

// ReplicaMode is the role of a replica in the volume.
type ReplicaMode string

const (
	// ModeHealthy replicas take writes and serve reads.
	ModeHealthy ReplicaMode = "healthy"
	// ModeRebuilding replicas take writes only while they receive the
	// layers they lack.
	ModeRebuilding ReplicaMode = "rebuilding"
	// ModeResyncing replicas hold the volume but may differ from the
	// source in blocks written when the engine last stopped without a
	// clean shutdown; they take every write and are repaired from the
	// source (see resync.go), and are never read until then.
	ModeResyncing ReplicaMode = "resyncing"
	// ModeStale replicas are reachable but older than the volume; they are
	// never read and wait for a rebuild.
	ModeStale ReplicaMode = "stale"
	// ModeFailed replicas errored, timed out or were refused.
	ModeFailed ReplicaMode = "failed"
)
