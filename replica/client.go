package replica

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// Client is a connection to a replica server. All methods are safe for
// concurrent use: requests from many goroutines are pipelined on the one
// connection and complete out of order. A context that ends makes the
// call return ctx.Err() (the request may still be executed by the server).
// When the connection fails every pending and later call fails with an
// error wrapping ErrClosed; the caller dials again.
type Client struct {
	conn net.Conn
	addr string

	wmu sync.Mutex // serializes frame writes

	mu      sync.Mutex
	pending map[uint64]*call
	nextID  uint64
	err     error // set once the connection failed or was closed
	done    chan struct{}
}

type call struct {
	id      uint64
	op      uint8
	dst     []byte // read destination; nil for other ops
	payload []byte // response payload when not read into dst
	status  uint8
	err     error
	done    chan struct{}
}

// Dial connects to the replica server at addr ("host:port" or
// "unix:/path") and authenticates with token.
func Dial(ctx context.Context, addr, token string) (*Client, error) {
	conn, err := DialConn(ctx, addr, token)
	if err != nil {
		return nil, err
	}
	c := &Client{conn: conn, addr: addr, pending: map[uint64]*call{}, done: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

// DialConn connects to the replica server at addr ("host:port" or
// "unix:/path") and authenticates with token, returning the connection
// ready for request frames: for clients that speak the I/O protocol
// themselves (the engine's batched data path).
func DialConn(ctx context.Context, addr, token string) (net.Conn, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: empty token", ErrInvalid)
	}
	var d net.Dialer
	var conn net.Conn
	var err error
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		conn, err = d.DialContext(ctx, "unix", path)
	} else {
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if err := clientHandshake(ctx, conn, []byte(token)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func clientHandshake(ctx context.Context, conn net.Conn, token []byte) error {
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	hello := make([]byte, 12+nonceSize)
	if err := readFull(conn, hello); err != nil {
		return fmt.Errorf("replica handshake: %w", err)
	}
	if string(hello[:8]) != protoMagic || binary.LittleEndian.Uint32(hello[8:]) != protoVersion {
		return fmt.Errorf("%w: peer is not a cairn replica (protocol %d)", ErrProtocol, protoVersion)
	}
	sNonce := hello[12:]
	msg := make([]byte, 12+nonceSize+macSize)
	copy(msg, protoMagic)
	binary.LittleEndian.PutUint32(msg[8:], protoVersion)
	cNonce := msg[12 : 12+nonceSize]
	rand.Read(cNonce)
	copy(msg[12+nonceSize:], authMAC(token, "client", sNonce, cNonce))
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("replica handshake: %w", err)
	}
	reply := make([]byte, 1+macSize)
	if err := readFull(conn, reply); err != nil {
		return fmt.Errorf("%w: server closed the connection during authentication: %v", ErrAuth, err)
	}
	if reply[0] != 0 {
		return fmt.Errorf("%w: server refused the token", ErrAuth)
	}
	if !hmac.Equal(reply[1:], authMAC(token, "server", sNonce, cNonce)) {
		return fmt.Errorf("%w: server does not know the token", ErrAuth)
	}
	return nil
}

// Close closes the connection; pending calls fail with ErrClosed.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	return nil
}

// Addr returns the address the client dialed.
func (c *Client) Addr() string { return c.addr }

// Done is closed when the connection is gone.
func (c *Client) Done() <-chan struct{} { return c.done }

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if !errors.Is(err, ErrClosed) {
		err = fmt.Errorf("%w: connection to %s lost: %v", ErrClosed, c.addr, err)
	}
	c.err = err
	pending := c.pending
	c.pending = nil
	close(c.done)
	c.mu.Unlock()
	c.conn.Close()
	for _, cl := range pending {
		cl.err = err
		close(cl.done)
	}
}

func (c *Client) readLoop() {
	br := bufio.NewReaderSize(c.conn, 256<<10)
	hdr := make([]byte, respHeaderSize)
	for {
		if err := readFull(br, hdr); err != nil {
			c.fail(err)
			return
		}
		h, err := decodeRespHeader(hdr)
		if err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		cl := c.pending[h.ID]
		delete(c.pending, h.ID)
		c.mu.Unlock()
		if cl == nil { // cancelled call: discard its payload
			if _, err := io.CopyN(io.Discard, br, int64(h.Payload)); err != nil {
				c.fail(err)
				return
			}
			continue
		}
		cl.status = h.Status
		var dst []byte
		if h.Status == 0 && cl.dst != nil && int(h.Payload) == len(cl.dst) {
			dst = cl.dst
		} else {
			dst = make([]byte, h.Payload)
			cl.payload = dst
		}
		if err := readFull(br, dst); err != nil {
			cl.err = fmt.Errorf("%w: connection lost: %v", ErrClosed, err)
			close(cl.done)
			c.fail(err)
			return
		}
		if h.Status == 0 && cl.dst != nil && int(h.Payload) != len(cl.dst) {
			cl.err = fmt.Errorf("%w: short read reply", ErrProtocol)
		}
		close(cl.done)
	}
}

// start sends one request; wait collects its reply.
func (c *Client) start(op uint8, off, length uint64, dst []byte, payload ...[]byte) (*call, error) {
	cl := &call{op: op, dst: dst, done: make(chan struct{})}
	var size int
	for _, p := range payload {
		size += len(p)
	}
	if size > maxPayload {
		return nil, fmt.Errorf("%w: payload of %d bytes", ErrTooLarge, size)
	}
	hdr := make([]byte, reqHeaderSize)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	id := c.nextID
	cl.id = id
	c.pending[id] = cl
	c.mu.Unlock()
	h := reqHeader{Op: op, Payload: uint32(size), ID: id, Offset: off, Length: length}
	h.encode(hdr)
	bufs := net.Buffers(append([][]byte{hdr}, payload...))
	c.wmu.Lock()
	_, err := bufs.WriteTo(c.conn)
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
		c.mu.Lock()
		err = c.err
		c.mu.Unlock()
		return nil, err
	}
	return cl, nil
}

func (c *Client) wait(ctx context.Context, cl *call) error {
	select {
	case <-cl.done:
	case <-ctx.Done():
		// still pending: forget it, the reader discards its reply
		c.mu.Lock()
		owned := c.pending[cl.id] == cl
		if owned {
			delete(c.pending, cl.id)
		}
		c.mu.Unlock()
		if owned {
			return ctx.Err()
		}
		<-cl.done // the reader is delivering it right now
	}
	if cl.err != nil {
		return cl.err
	}
	if cl.status != 0 {
		return &RemoteError{Status: cl.status, Message: string(cl.payload)}
	}
	return nil
}

func (c *Client) do(ctx context.Context, op uint8, off, length uint64, dst []byte, payload ...[]byte) (*call, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cl, err := c.start(op, off, length, dst, payload...)
	if err != nil {
		return nil, err
	}
	return cl, c.wait(ctx, cl)
}

func (c *Client) ctl(ctx context.Context, op uint8, off, length uint64, req *ctlRequest, resp any) error {
	var payload []byte
	if req != nil {
		var err error
		if payload, err = json.Marshal(req); err != nil {
			return err
		}
	}
	cl, err := c.do(ctx, op, off, length, nil, payload)
	if err != nil {
		return err
	}
	if resp != nil {
		if err := json.Unmarshal(cl.payload, resp); err != nil {
			return fmt.Errorf("%w: bad reply: %v", ErrProtocol, err)
		}
	}
	return nil
}

// pieces splits [off, off+n) into frames of at most MaxIO bytes, issues
// them all (pipelined) and waits for every reply.
func (c *Client) pieces(ctx context.Context, n int, each func(lo, hi int) (*call, error)) error {
	var calls []*call
	var first error
	for lo := 0; lo < n || (n == 0 && lo == 0); lo += MaxIO {
		cl, err := each(lo, min(n, lo+MaxIO))
		if err != nil {
			first = err
			break
		}
		calls = append(calls, cl)
		if n == 0 {
			break
		}
	}
	for _, cl := range calls {
		if err := c.wait(ctx, cl); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", ErrOutOfRange)
	}
	err := c.pieces(ctx, len(p), func(lo, hi int) (*call, error) {
		return c.start(opRead, uint64(off)+uint64(lo), uint64(hi-lo), p[lo:hi])
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes p at off. The write is durable after a later Flush.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", ErrOutOfRange)
	}
	err := c.pieces(ctx, len(p), func(lo, hi int) (*call, error) {
		return c.start(opWrite, uint64(off)+uint64(lo), uint64(hi-lo), nil, p[lo:hi])
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush makes every write acknowledged before it durable.
func (c *Client) Flush(ctx context.Context) error {
	_, err := c.do(ctx, opFlush, 0, 0, nil)
	return err
}

// Trim discards whole blocks of [off, off+length) (see Replica.Trim).
func (c *Client) Trim(ctx context.Context, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("%w: negative offset or length", ErrOutOfRange)
	}
	_, err := c.do(ctx, opTrim, uint64(off), uint64(length), nil)
	return err
}

// WriteZeroes makes [off, off+length) read as zeroes.
func (c *Client) WriteZeroes(ctx context.Context, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("%w: negative offset or length", ErrOutOfRange)
	}
	_, err := c.do(ctx, opWriteZeroes, uint64(off), uint64(length), nil)
	return err
}

// Ping round-trips an empty request.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.do(ctx, opPing, 0, 0, nil)
	return err
}

// Info returns the replica's size, generation and snapshot chain.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var in Info
	err := c.ctl(ctx, opInfo, 0, 0, nil, &in)
	return in, err
}

// SetGeneration durably stores the generation (never lower than before).
func (c *Client) SetGeneration(ctx context.Context, g uint64) error {
	return c.ctl(ctx, opSetGeneration, g, 0, nil, nil)
}

// Grow raises the volume size to size (see Replica.Grow).
func (c *Client) Grow(ctx context.Context, size int64) error {
	if size <= 0 {
		return fmt.Errorf("%w: size %d", ErrInvalid, size)
	}
	return c.ctl(ctx, opGrow, uint64(size), 0, nil, nil)
}

// Snapshot freezes the head as snapshot name (see Replica.Snapshot).
func (c *Client) Snapshot(ctx context.Context, name string, labels map[string]string) error {
	return c.ctl(ctx, opSnapshot, 0, 0, &ctlRequest{Name: name, Labels: labels}, nil)
}

// Revert makes the volume read as snapshot name (see Replica.Revert).
func (c *Client) Revert(ctx context.Context, name string) error {
	return c.ctl(ctx, opRevert, 0, 0, &ctlRequest{Name: name}, nil)
}

// RemoveSnapshot deletes a snapshot, coalescing it into its child.
func (c *Client) RemoveSnapshot(ctx context.Context, name string) error {
	return c.ctl(ctx, opRemoveSnapshot, 0, 0, &ctlRequest{Name: name}, nil)
}

// Checksum computes (and for snapshots stores) a layer checksum; "" is
// the head.
func (c *Client) Checksum(ctx context.Context, layer string) (string, error) {
	var resp checksumResponse
	err := c.ctl(ctx, opChecksum, 0, 0, &ctlRequest{Name: layer}, &resp)
	return resp.Checksum, err
}

// Scrub verifies every snapshot against its checksum (see Replica.Scrub).
// Corruption is reported in the report and as an ErrCorrupt error.
func (c *Client) Scrub(ctx context.Context) (ScrubReport, error) {
	var rep ScrubReport
	if err := c.ctl(ctx, opScrub, 0, 0, nil, &rep); err != nil {
		return rep, err
	}
	if len(rep.Corrupt) > 0 {
		return rep, fmt.Errorf("%w: snapshot data does not match its checksum: %v", ErrCorrupt, rep.Corrupt)
	}
	return rep, nil
}

// extents pages an extent query through windows of extentWindow bytes.
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
	for w := off; w < end || (length == 0 && w == off); w += extentWindow {
		n := min(end-w, extentWindow)
		cl, err := c.do(ctx, op, uint64(w), uint64(n), nil, payload)
		if err != nil {
			return nil, err
		}
		ext, err := decodeExtents(cl.payload)
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
	return c.extents(ctx, opDiff, &ctlRequest{From: from, To: to}, 0, size)
}

// ChangedSince returns the extents the head changed in since generation
// gen (see Replica.ChangedSince); size is the volume size (from Info).
// ErrNotFound means the server does not track that far back: rebuild.
func (c *Client) ChangedSince(ctx context.Context, gen uint64, size int64) ([]Extent, error) {
	return c.extents(ctx, opChangedSince, &ctlRequest{Generation: gen}, 0, size)
}

// LayerExtents returns the allocated extents of one layer in
// [off, off+length) (rebuild source side).
func (c *Client) LayerExtents(ctx context.Context, layer string, off, length int64) ([]Extent, error) {
	return c.extents(ctx, opLayerExtents, &ctlRequest{Name: layer}, off, length)
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
	err := c.ctl(ctx, opPullLayer, uint64(off), uint64(length), &ctlRequest{Name: layer, Source: source}, &resp)
	return resp.Bytes, err
}

// ReadLayer reads the raw content of one layer (rebuild source side).
func (c *Client) ReadLayer(ctx context.Context, layer string, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", ErrOutOfRange)
	}
	if len(layer) > 255 {
		return 0, fmt.Errorf("%w: layer name too long", ErrInvalid)
	}
	name := layerPayload(layer)
	err := c.pieces(ctx, len(p), func(lo, hi int) (*call, error) {
		return c.start(opReadLayer, uint64(off)+uint64(lo), uint64(hi-lo), p[lo:hi], name)
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// ResetForRebuild prepares a rebuild target (see Replica.ResetForRebuild).
func (c *Client) ResetForRebuild(ctx context.Context, keep []string, receive []SnapshotInfo) error {
	return c.ctl(ctx, opResetForRebuild, 0, 0, &ctlRequest{Keep: keep, Receive: receive}, nil)
}

// WriteLayer writes block-aligned data into a layer being received.
func (c *Client) WriteLayer(ctx context.Context, layer string, p []byte, off int64) error {
	if off < 0 {
		return fmt.Errorf("%w: negative offset", ErrOutOfRange)
	}
	if len(layer) > 255 {
		return fmt.Errorf("%w: layer name too long", ErrInvalid)
	}
	name := layerPayload(layer)
	return c.pieces(ctx, len(p), func(lo, hi int) (*call, error) {
		return c.start(opWriteLayer, uint64(off)+uint64(lo), uint64(hi-lo), nil, name, p[lo:hi])
	})
}

// WriteLayerExtents writes many block-aligned extents into a layer being
// received (see Replica.WriteLayerExtents); data holds their bytes back to
// back. Extents are packed into as few frames as the frame size allows
// (an extent larger than a frame is split), and the frames are pipelined.
func (c *Client) WriteLayerExtents(ctx context.Context, layer string, extents []Extent, data []byte) error {
	if len(layer) > 255 {
		return fmt.Errorf("%w: layer name too long", ErrInvalid)
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
	name := layerPayload(layer)
	var calls []*call
	var first error
	var batch []Extent
	var lo, hi int64 // data of the batch: data[lo:hi]
	send := func() {
		if len(batch) == 0 || first != nil {
			return
		}
		cl, err := c.start(opWriteLayerExtents, 0, uint64(len(batch)), nil, name, encodeExtents(batch), data[lo:hi])
		if err != nil {
			first = err
		} else {
			calls = append(calls, cl)
		}
		batch, lo = batch[:0], hi
	}
	for _, e := range extents {
		for e.Length > 0 && first == nil {
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
	for _, cl := range calls {
		if err := c.wait(ctx, cl); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// CommitLayer seals a received layer (see Replica.CommitLayer).
func (c *Client) CommitLayer(ctx context.Context, layer string) error {
	return c.ctl(ctx, opCommitLayer, 0, 0, &ctlRequest{Name: layer}, nil)
}
