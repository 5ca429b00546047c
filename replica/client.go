package replica

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cairnstore/cairn/replica/wire"
)

// Client is a connection to a replica server, on the protocol's one
// client implementation (wire.Conn). All methods are safe for concurrent
// use: requests from many goroutines are pipelined on the one connection
// and complete out of order. A context that ends makes the call return
// ctx.Err(); the request may still be executed by the server, and when the
// request still holds the caller's buffer (a read or write) the
// connection is closed so that the buffer is free when the call returns.
// When the connection fails every pending and later call fails with an
// error wrapping ErrClosed; the caller dials again.
type Client struct {
	c *wire.Conn
}

// Dial connects to the replica server at addr ("host:port" or
// "unix:/path") and authenticates with token.
func Dial(ctx context.Context, addr, token string) (*Client, error) {
	conn, err := wire.Dial(ctx, addr, token)
	if err != nil {
		return nil, err
	}
	return &Client{c: wire.NewConn(conn, addr)}, nil
}

// Close closes the connection; pending calls fail with ErrClosed.
func (c *Client) Close() error { return c.c.Close() }

// Addr returns the address the client dialed.
func (c *Client) Addr() string { return c.c.Addr() }

// Done is closed when the connection is gone.
func (c *Client) Done() <-chan struct{} { return c.c.Done() }

// Submit queues a request without waiting: the asynchronous I/O path (the
// engine's). The request's owner gets the result.
func (c *Client) Submit(r *wire.Request) { c.c.Submit(r) }

// SetIOTimeout makes the connection fail when a request waits longer than
// d for its reply (0: never, the default).
func (c *Client) SetIOTimeout(d time.Duration) { c.c.SetTimeout(d) }

// waiter is the owner of a synchronous call's requests.
type waiter struct {
	ch  chan struct{}
	err atomic.Pointer[error]
	n   atomic.Int32
}

func (w *waiter) Done(_ *wire.Request, err error) {
	if err != nil {
		w.err.CompareAndSwap(nil, &err)
	}
	if w.n.Add(-1) == 0 {
		close(w.ch)
	}
}

// run submits reqs (pipelined) and waits for all of them; the first error
// wins.
func (c *Client) run(ctx context.Context, reqs ...*wire.Request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &waiter{ch: make(chan struct{})}
	w.n.Store(int32(len(reqs)))
	buffers := false
	for _, r := range reqs {
		r.Owner = w
		buffers = buffers || len(r.Data) > 0
		c.c.Submit(r)
	}
	select {
	case <-w.ch:
	case <-ctx.Done():
		if !buffers {
			return ctx.Err()
		}
		c.c.Fail(ctx.Err())
		<-w.ch
		return ctx.Err()
	}
	if p := w.err.Load(); p != nil {
		return *p
	}
	return nil
}

// ctl runs one control request with an optional JSON body and decodes the
// JSON reply into resp.
func (c *Client) ctl(ctx context.Context, op uint8, off, length uint64, req *ctlRequest, resp any) error {
	r := &wire.Request{Op: op, Off: off, Length: length}
	if req != nil {
		var err error
		if r.Prefix, err = json.Marshal(req); err != nil {
			return err
		}
		if len(r.Prefix) > wire.MaxControlPayload {
			return fmt.Errorf("%w: control payload of %d bytes", ErrTooLarge, len(r.Prefix))
		}
	}
	if err := c.run(ctx, r); err != nil {
		return err
	}
	if resp != nil {
		if err := json.Unmarshal(r.Reply, resp); err != nil {
			return fmt.Errorf("%w: bad reply: %v", ErrProtocol, err)
		}
	}
	return nil
}

// io splits a read or write of p at off into frames of at most MaxIO
// bytes, issues them all (pipelined) and waits for every reply.
func (c *Client) io(ctx context.Context, op uint8, prefix, p []byte, off int64) error {
	if off < 0 {
		return fmt.Errorf("%w: negative offset", ErrOutOfRange)
	}
	reqs := make([]*wire.Request, 0, max(1, (len(p)+MaxIO-1)/MaxIO))
	for lo := 0; lo < len(p) || lo == 0; lo += MaxIO {
		hi := min(len(p), lo+MaxIO)
		reqs = append(reqs, &wire.Request{Op: op, Off: uint64(off) + uint64(lo), Length: uint64(hi - lo), Prefix: prefix, Data: p[lo:hi]})
		if hi == len(p) {
			break
		}
	}
	return c.run(ctx, reqs...)
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := c.io(ctx, wire.OpRead, nil, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes p at off. The write is durable after a later Flush.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := c.io(ctx, wire.OpWrite, nil, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// rangeOp runs an operation on [off, off+length) without payload.
func (c *Client) rangeOp(ctx context.Context, op uint8, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("%w: negative offset or length", ErrOutOfRange)
	}
	return c.run(ctx, &wire.Request{Op: op, Off: uint64(off), Length: uint64(length)})
}

// Flush makes every write acknowledged before it durable.
func (c *Client) Flush(ctx context.Context) error { return c.rangeOp(ctx, wire.OpFlush, 0, 0) }

// Trim discards whole blocks of [off, off+length) (see Replica.Trim).
func (c *Client) Trim(ctx context.Context, off, length int64) error {
	return c.rangeOp(ctx, wire.OpTrim, off, length)
}

// WriteZeroes makes [off, off+length) read as zeroes.
func (c *Client) WriteZeroes(ctx context.Context, off, length int64) error {
	return c.rangeOp(ctx, wire.OpWriteZeroes, off, length)
}

// Ping round-trips an empty request.
func (c *Client) Ping(ctx context.Context) error { return c.rangeOp(ctx, wire.OpPing, 0, 0) }

// Info returns the replica's size, generation and snapshot chain.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var in Info
	err := c.ctl(ctx, wire.OpInfo, 0, 0, nil, &in)
	return in, err
}

// SetGeneration durably stores the generation (never lower than before).
func (c *Client) SetGeneration(ctx context.Context, g uint64) error {
	return c.ctl(ctx, wire.OpSetGeneration, g, 0, nil, nil)
}

// Grow raises the volume size to size (see Replica.Grow).
func (c *Client) Grow(ctx context.Context, size int64) error {
	if size <= 0 {
		return fmt.Errorf("%w: size %d", ErrInvalid, size)
	}
	return c.ctl(ctx, wire.OpGrow, uint64(size), 0, nil, nil)
}

// Snapshot freezes the head as snapshot name (see Replica.Snapshot).
func (c *Client) Snapshot(ctx context.Context, name string, labels map[string]string) error {
	return c.ctl(ctx, wire.OpSnapshot, 0, 0, &ctlRequest{Name: name, Labels: labels}, nil)
}

// Revert makes the volume read as snapshot name (see Replica.Revert).
func (c *Client) Revert(ctx context.Context, name string) error {
	return c.ctl(ctx, wire.OpRevert, 0, 0, &ctlRequest{Name: name}, nil)
}

// RemoveSnapshot deletes a snapshot, coalescing it into its child.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.ctl(ctx, wire.OpRemoveSnapshot, 0, 0, &ctlRequest{Name: name}, nil)
}

// Checksum computes (and for snapshots stores) a layer checksum; "" is
// the head.
func (c *Client) Checksum(ctx context.Context, layer string) (string, error) {
	var resp checksumResponse
	err := c.ctl(ctx, wire.OpChecksum, 0, 0, &ctlRequest{Name: layer}, &resp)
	return resp.Checksum, err
}

// Scrub verifies every snapshot against its checksum (see Replica.Scrub).
// Corruption is reported in the report and as an ErrCorrupt error.
func (c *Client) Scrub(ctx context.Context) (ScrubReport, error) {
	var rep ScrubReport
	if err := c.ctl(ctx, wire.OpScrub, 0, 0, nil, &rep); err != nil {
		return rep, err
	}
	if len(rep.Corrupt) > 0 {
		return rep, fmt.Errorf("%w: snapshot data does not match its checksum: %v", ErrCorrupt, rep.Corrupt)
	}
	return rep, nil
}

// extents pages an extent query through windows of wire.ExtentWindow
// bytes.
func (c *Client) extents(ctx context.Context, op uint8, req *ctlRequest, off, length int64) ([]Extent, error) {
	if off < 0 || length < 0 {
		return nil, fmt.Errorf("%w: negative offset or length", ErrOutOfRange)
	}
	payload, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	out := []Extent{}
	end := off + length
	for w := off; w < end || (length == 0 && w == off); w += wire.ExtentWindow {
		n := min(end-w, wire.ExtentWindow)
		r := &wire.Request{Op: op, Off: uint64(w), Length: uint64(n), Prefix: payload}
		if err := c.run(ctx, r); err != nil {
			return nil, err
		}
		ext, err := decodeExtents(r.Reply)
		if err != nil {
			return nil, err
		}
		for _, e := range ext {
			if k := len(out); k > 0 && out[k-1].End() >= e.Offset {
				out[k-1].Length = max(out[k-1].End(), e.End()) - out[k-1].Offset
			} else {
				out = append(out, e)
			}
		}
		if length == 0 {
			break
		}
	}
	return out, nil
}

// Diff returns the extents changed between snapshots from and to (see
// Replica.Diff); size is the volume size (from Info).
func (c *Client) Diff(ctx context.Context, from, to string, size int64) ([]Extent, error) {
	return c.extents(ctx, wire.OpDiff, &ctlRequest{From: from, To: to}, 0, size)
}

// ChangedSince returns the extents the head changed in since generation
// gen (see Replica.ChangedSince); size is the volume size (from Info).
// ErrNotFound means the server does not track that far back: rebuild.
func (c *Client) ChangedSince(ctx context.Context, gen uint64, size int64) ([]Extent, error) {
	return c.extents(ctx, wire.OpChangedSince, &ctlRequest{Generation: gen}, 0, size)
}

// LayerExtents returns the allocated extents of one layer in
// [off, off+length) (rebuild source side).
func (c *Client) LayerExtents(ctx context.Context, layer string, off, length int64) ([]Extent, error) {
	return c.extents(ctx, wire.OpLayerExtents, &ctlRequest{Name: layer}, off, length)
}

// PullLayer has the replica copy the allocated extents of layer within
// [off, off+length) from the replica at source (which it dials and
// authenticates to itself) into its own incomplete layer of that name, and
// returns the bytes copied: a rebuild whose data does not pass through the
// caller. ErrUnreachable: the replica could not reach source.
func (c *Client) PullLayer(ctx context.Context, layer, source string, off, length int64) (int64, error) {
	if off < 0 || length < 0 {
		return 0, fmt.Errorf("%w: negative range", ErrOutOfRange)
	}
	var resp pullResponse
	err := c.ctl(ctx, wire.OpPullLayer, uint64(off), uint64(length), &ctlRequest{Name: layer, Source: source}, &resp)
	return resp.Bytes, err
}

// layerPrefix checks a layer name and returns its payload prefix.
func layerPrefix(layer string) ([]byte, error) {
	if len(layer) > 255 {
		return nil, fmt.Errorf("%w: layer name too long", ErrInvalid)
	}
	return wire.LayerPrefix(layer), nil
}

// ReadLayer reads the raw content of one layer (rebuild source side).
func (c *Client) ReadLayer(ctx context.Context, layer string, p []byte, off int64) (int, error) {
	name, err := layerPrefix(layer)
	if err != nil {
		return 0, err
	}
	if err := c.io(ctx, wire.OpReadLayer, name, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// ResetForRebuild prepares a rebuild target (see Replica.ResetForRebuild).
func (c *Client) ResetForRebuild(ctx context.Context, keep []string, receive []SnapshotInfo) error {
	return c.ctl(ctx, wire.OpResetForRebuild, 0, 0, &ctlRequest{Keep: keep, Receive: receive}, nil)
}

// WriteLayer writes block-aligned data into a layer being received.
func (c *Client) WriteLayer(ctx context.Context, layer string, p []byte, off int64) error {
	name, err := layerPrefix(layer)
	if err != nil {
		return err
	}
	return c.io(ctx, wire.OpWriteLayer, name, p, off)
}

// WriteLayerExtents writes many block-aligned extents into a layer being
// received (see Replica.WriteLayerExtents); data holds their bytes back to
// back. Extents are packed into as few frames as the frame size allows
// (an extent larger than a frame is split), and the frames are pipelined.
func (c *Client) WriteLayerExtents(ctx context.Context, layer string, extents []Extent, data []byte) error {
	name, err := layerPrefix(layer)
	if err != nil {
		return err
	}
	var total int64
	for _, e := range extents {
		if e.Offset < 0 || e.Length < 0 {
			return fmt.Errorf("%w: extent [%d, +%d)", ErrOutOfRange, e.Offset, e.Length)
		}
		total += e.Length
	}
	if total != int64(len(data)) {
		return fmt.Errorf("%w: extents cover %d bytes but %d bytes of data", ErrInvalid, total, len(data))
	}
	var reqs []*wire.Request
	var batch []Extent
	var lo, hi int64 // data of the batch: data[lo:hi]
	send := func() {
		if len(batch) > 0 {
			prefix := encodeExtents(append([]byte(nil), name...), batch)
			reqs = append(reqs, &wire.Request{Op: wire.OpWriteLayerExtents, Length: uint64(len(batch)), Prefix: prefix, Data: data[lo:hi]})
		}
		batch, lo = batch[:0], hi
	}
	for _, e := range extents {
		for e.Length > 0 {
			room := int64(MaxIO) - int64(16*(len(batch)+1)) - (hi - lo)
			if room < BlockSize {
				send()
				continue
			}
			n := min(e.Length, room&^(BlockSize-1))
			if e.Length%BlockSize != 0 {
				n = min(e.Length, room) // unaligned: the server refuses it
			}
			batch = append(batch, Extent{Offset: e.Offset, Length: n})
			hi += n
			e.Offset, e.Length = e.Offset+n, e.Length-n
		}
	}
	send()
	if len(reqs) == 0 {
		return nil
	}
	return c.run(ctx, reqs...)
}

// CommitLayer seals a received layer (see Replica.CommitLayer).
func (c *Client) CommitLayer(ctx context.Context, layer string) error {
	return c.ctl(ctx, wire.OpCommitLayer, 0, 0, &ctlRequest{Name: layer}, nil)
}
