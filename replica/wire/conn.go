package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnstore/cairn/internal/netx"
)

// Conn is the client side of one authenticated connection: requests from
// any number of goroutines are pipelined on it and complete out of order.
// It is built for the I/O path, which is syscall- and wakeup-bound:
// requests are queued, one writer goroutine sends everything queued with a
// single vectored write, and one reader goroutine completes requests by
// calling their owner directly, so a request costs no goroutine, channel
// or timer of its own:
//
//	Submit --> queue --> writer: writev(hdr|data|hdr|data...) --> server
//	Owner.Done <-- reader: bufio, reads data into the request's buffer <-- server
//
// Timeouts are one watchdog per connection (SetTimeout): a request older
// than the timeout fails the connection, and every request on it then
// fails. Requests are completed only after the writer has stopped, so a
// failed write's buffer is never read again once its owner has it back.
type Conn struct {
	conn net.Conn
	addr string

	mu      sync.Mutex
	queue   []*Request // waiting for the writer
	slots   []*Request // sent (or queued), by slot
	seq     []uint32   // per-slot sequence, so a stray reply is detected
	free    []uint32
	err     error // set once the connection failed or closed
	waiting bool  // the writer is parked on wake
	watched bool  // the watchdog runs

	wake     chan struct{}
	done     chan struct{} // closed when the connection failed
	finished chan struct{} // closed when every request has been completed

	tick    atomic.Int64
	timeout atomic.Int64 // nanoseconds; 0 = none
}

// Request is one request frame. Its owner is told the result exactly once,
// on the connection's reader goroutine (or the one that failed the
// connection); Done must not block. The request and its buffers belong to
// the connection from Submit until Done.
type Request struct {
	Op     uint8
	Off    uint64
	Length uint64
	// Prefix is sent first in the payload: a layer name prefix, a JSON
	// control request, an extent list. It is copied at Submit time.
	Prefix []byte
	// Data is the rest of a write's payload, or the destination of a
	// read's data (ReadsInto(Op)).
	Data []byte
	// Reply is the reply payload of a successful request other than a
	// read (JSON, extents), set before Done.
	Reply []byte
	Owner Owner

	slot uint32
	id   uint64
	tick int64
}

// Owner receives the completion of a request.
type Owner interface {
	Done(r *Request, err error)
}

// Limits of one connection.
const (
	initialSlots   = 1024     // request slots a connection starts with
	maxSlots       = 1 << 16  // requests in flight at most
	copySmallLimit = 16 << 10 // payloads up to this are copied into the batch buffer
)

// NewConn starts serving an authenticated connection (see Dial); addr
// names the peer in errors.
func NewConn(conn net.Conn, addr string) *Conn {
	c := &Conn{
		conn: conn, addr: addr,
		wake: make(chan struct{}, 1), done: make(chan struct{}), finished: make(chan struct{}),
	}
	c.growSlots(initialSlots)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.writeLoop() }()
	go func() { defer wg.Done(); c.readLoop() }()
	go func() {
		wg.Wait()
		c.completeAll()
	}()
	return c
}

// Addr returns the peer's address.
func (c *Conn) Addr() string { return c.addr }

// Done is closed when the connection has failed or was closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// growSlots adds request slots up to n in all. Callers hold mu (or own
// c alone).
func (c *Conn) growSlots(n int) {
	old := len(c.slots)
	c.slots = append(c.slots, make([]*Request, n-old)...)
	c.seq = append(c.seq, make([]uint32, n-old)...)
	for i := n - 1; i >= old; i-- {
		c.free = append(c.free, uint32(i))
	}
}

// Submit queues a request. If the connection has failed, the request
// completes with the error before Submit returns.
func (c *Conn) Submit(r *Request) {
	c.mu.Lock()
	if len(c.free) == 0 && len(c.slots) < maxSlots {
		c.growSlots(min(2*len(c.slots), maxSlots))
	}
	if c.err != nil || len(c.free) == 0 {
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = fmt.Errorf("%w: too many requests in flight", ErrTooLarge)
		}
		r.Owner.Done(r, err)
		return
	}
	s := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	c.seq[s]++
	r.slot, r.id = s, uint64(c.seq[s])<<32|uint64(s)
	r.tick = c.tick.Load()
	r.Reply = nil
	c.slots[s] = r
	c.queue = append(c.queue, r)
	wake := c.waiting
	c.waiting = false
	c.mu.Unlock()
	if wake {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// payloadLen is the request's payload size on the wire.
func (r *Request) payloadLen() int {
	if ReadsInto(r.Op) {
		return len(r.Prefix)
	}
	return len(r.Prefix) + len(r.Data)
}

func (c *Conn) writeLoop() {
	var batch []*Request
	var scratch []byte
	var iov [][]byte
	for {
		c.mu.Lock()
		for len(c.queue) == 0 && c.err == nil {
			c.waiting = true
			c.mu.Unlock()
			select {
			case <-c.wake:
			case <-c.done:
			}
			c.mu.Lock()
		}
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		batch, c.queue = c.queue, batch[:0]
		c.mu.Unlock()
		scratch, iov = encodeBatch(batch, scratch, iov[:0])
		_, err := netx.WriteBuffers(c.conn, iov)
		clear(batch) // drop references; the requests live in slots
		clear(iov)
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// encodeBatch lays out the frames of batch as iovecs: headers, prefixes
// and small payloads go into scratch; large payloads are iovecs of their
// own (no copy).
func encodeBatch(batch []*Request, scratch []byte, iov [][]byte) ([]byte, [][]byte) {
	need := 0
	for _, r := range batch {
		need += ReqHeaderSize + len(r.Prefix)
		if !ReadsInto(r.Op) && len(r.Data) <= copySmallLimit {
			need += len(r.Data)
		}
	}
	if cap(scratch) < need {
		scratch = make([]byte, 0, max(need, 64<<10))
	}
	scratch = scratch[:0]
	mark := 0
	for _, r := range batch {
		h := ReqHeader{Op: r.Op, Payload: uint32(r.payloadLen()), ID: r.id, Offset: r.Off, Length: r.Length}
		n := len(scratch)
		scratch = scratch[:n+ReqHeaderSize]
		h.Encode(scratch[n:])
		scratch = append(scratch, r.Prefix...)
		if ReadsInto(r.Op) || len(r.Data) == 0 {
			continue
		}
		if len(r.Data) <= copySmallLimit {
			scratch = append(scratch, r.Data...)
		} else {
			iov = append(iov, scratch[mark:], r.Data)
			mark = len(scratch)
		}
	}
	if mark < len(scratch) {
		iov = append(iov, scratch[mark:])
	}
	return scratch, iov
}

func (c *Conn) readLoop() {
	br := bufio.NewReaderSize(c.conn, 256<<10)
	var hdr [RespHeaderSize]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			c.fail(err)
			return
		}
		h, err := DecodeRespHeader(hdr[:])
		if err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		var r *Request
		if s := uint32(h.ID); int(s) < len(c.slots) {
			r = c.slots[s]
		}
		if r == nil || r.id != h.ID {
			c.mu.Unlock()
			c.fail(fmt.Errorf("%w: reply for unknown request %#x", ErrProtocol, h.ID))
			return
		}
		c.slots[uint32(h.ID)] = nil
		c.free = append(c.free, uint32(h.ID))
		c.mu.Unlock()
		err, lost := c.readReply(br, r, h)
		r.Owner.Done(r, err)
		if lost != nil {
			c.fail(lost)
			return
		}
	}
}

// readReply reads the payload of r's reply h. lost is set when the
// connection broke.
func (c *Conn) readReply(br *bufio.Reader, r *Request, h RespHeader) (err, lost error) {
	n := int(h.Payload)
	var dst []byte
	switch {
	case h.Status == 0 && ReadsInto(r.Op) && n == len(r.Data):
		dst = r.Data
	case n > 0:
		dst = make([]byte, n)
	}
	if _, err := io.ReadFull(br, dst); err != nil {
		return fmt.Errorf("%w: connection to %s lost: %v", ErrClosed, c.addr, err), err
	}
	switch {
	case h.Status != 0:
		return &RemoteError{Status: h.Status, Message: string(dst)}, nil
	case ReadsInto(r.Op) && n != len(r.Data):
		return fmt.Errorf("%w: short read reply (%d of %d bytes)", ErrProtocol, n, len(r.Data)), nil
	case !ReadsInto(r.Op):
		r.Reply = dst
	}
	return nil, nil
}

// watchdogPeriod is the resolution of I/O timeouts.
const watchdogPeriod = 50 * time.Millisecond

// SetTimeout makes the connection fail when a request has waited longer
// than d for its reply (d <= 0: never, the default).
func (c *Conn) SetTimeout(d time.Duration) {
	c.timeout.Store(int64(max(d, 0)))
	if d <= 0 {
		return
	}
	c.mu.Lock()
	start := !c.watched && c.err == nil
	c.watched = true
	c.mu.Unlock()
	if start {
		go c.watchdog()
	}
}

// watchdog fails the connection when a request has waited longer than the
// timeout. Requests carry the tick they were queued at, so the I/O path
// reads no clock.
func (c *Conn) watchdog() {
	t := time.NewTicker(watchdogPeriod)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		now := c.tick.Add(1)
		timeout := time.Duration(c.timeout.Load())
		if timeout <= 0 {
			continue
		}
		limit := int64(timeout/watchdogPeriod) + 1
		c.mu.Lock()
		late := false
		for _, r := range c.slots {
			if r != nil && now-r.tick > limit {
				late = true
				break
			}
		}
		c.mu.Unlock()
		if late {
			c.fail(fmt.Errorf("%w after %v (context deadline exceeded)", ErrTimeout, timeout))
			return
		}
	}
}

// Fail closes the connection with err: every pending request fails.
func (c *Conn) Fail(err error) { c.fail(err) }

func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if !errors.Is(err, ErrClosed) {
		err = fmt.Errorf("%w: connection to %s lost: %w", ErrClosed, c.addr, err)
	}
	c.err = err
	close(c.done)
	c.mu.Unlock()
	c.conn.Close()
}

// completeAll runs after reader and writer stopped: every request still
// waiting fails with the connection's error.
func (c *Conn) completeAll() {
	c.mu.Lock()
	err := c.err
	var reqs []*Request
	for i, r := range c.slots {
		if r != nil {
			reqs = append(reqs, r)
			c.slots[i] = nil
		}
	}
	c.queue = nil
	c.mu.Unlock()
	for _, r := range reqs {
		r.Owner.Done(r, err)
	}
	close(c.finished)
}

// Close fails every pending request and waits until they are completed.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	<-c.finished
	return nil
}
