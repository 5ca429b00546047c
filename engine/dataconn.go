package engine

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnstore/cairn/replica"
)

// dataConn is the engine's I/O connection to one replica server. It speaks
// the replica wire protocol (version 1, see the replica package doc) for
// the data operations only; control operations use replica.Client on a
// second connection.
//
// It exists because the I/O path is syscall- and wakeup-bound: replica.Client
// writes every frame with its own writev under a mutex and gives every call
// a channel. Here requests (legs) are queued, one writer goroutine sends
// everything queued with a single vectored write, and one reader goroutine
// completes legs by calling their owner directly, so a leg costs no
// goroutine, channel or timer of its own:
//
//	Volume.Submit --> queue --> writer: writev(hdr|data|hdr|data...) --> replica
//	owner.ioDone  <-- reader: bufio, reads data into the leg's buffer   <-- replica
//
// Timeouts are one watchdog per connection: a leg older than the I/O timeout
// fails the connection, and every leg on it then fails (the volume drops the
// replica). Legs are completed only after the writer has stopped, so a
// failed write's buffer is never read again once its owner has it back.
type dataConn struct {
	conn net.Conn
	addr string

	mu      sync.Mutex
	queue   []*ioLeg // waiting for the writer
	slots   []*ioLeg // sent (or queued), by slot
	seq     []uint32 // per-slot sequence, so a stray reply is detected
	free    []uint32
	err     error // set once the connection failed or closed
	waiting bool  // the writer is parked on wake

	wake     chan struct{}
	done     chan struct{} // closed when the connection failed
	finished chan struct{} // closed when every leg has been completed

	tick    atomic.Int64
	timeout atomic.Int64 // nanoseconds
}

// ioLeg is one replica request of the I/O path. Its owner is told the
// result exactly once, on the connection's reader goroutine (or the one
// that failed the connection); ioDone must not block on Volume.mu.
type ioLeg struct {
	op     uint8
	off    uint64
	length uint64
	name   []byte // layer-name prefix of ReadLayer/WriteLayer payloads
	data   []byte // write payload or read destination

	owner ioOwner
	m     *member
	slot  uint32
	id    uint64
	tick  int64
}

type ioOwner interface {
	ioDone(l *ioLeg, err error)
}

// Replica protocol constants (replica/protocol.go, version 1).
const (
	rpReqHeader    = 32
	rpRespHeader   = 16
	rpMaxSlots     = 1024
	rpOpRead       = 1
	rpOpWrite      = 2
	rpOpFlush      = 3
	rpOpTrim       = 4
	rpOpZeroes     = 5
	rpOpPing       = 6
	rpOpReadLayer  = 33
	rpOpWriteLayer = 35
	copySmallLimit = 16 << 10 // payloads up to this are copied into the batch buffer
)

// errConnTimeout is the cause of a connection failed by the watchdog.
var errConnTimeout = errors.New("replica I/O timed out")

// dialData opens and authenticates a data connection.
func dialData(ctx context.Context, addr, token string, timeout time.Duration) (*dataConn, error) {
	conn, err := replica.DialConn(ctx, addr, token)
	if err != nil {
		return nil, err
	}
	c := &dataConn{
		conn: conn, addr: addr,
		slots: make([]*ioLeg, rpMaxSlots), seq: make([]uint32, rpMaxSlots), free: make([]uint32, rpMaxSlots),
		wake: make(chan struct{}, 1), done: make(chan struct{}), finished: make(chan struct{}),
	}
	for i := range c.free {
		c.free[i] = uint32(rpMaxSlots - 1 - i)
	}
	c.setTimeout(timeout)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.writeLoop() }()
	go func() { defer wg.Done(); c.readLoop() }()
	go c.watchdog()
	go func() {
		wg.Wait()
		c.completeAll()
	}()
	return c, nil
}

// submit queues a leg. If the connection has failed, the leg completes
// with the error before submit returns.
func (c *dataConn) submit(l *ioLeg) {
	c.mu.Lock()
	if c.err != nil || len(c.free) == 0 {
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = fmt.Errorf("%w: too many requests in flight", replica.ErrTooLarge)
		}
		l.owner.ioDone(l, err)
		return
	}
	s := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	c.seq[s]++
	l.slot, l.id = s, uint64(c.seq[s])<<32|uint64(s)
	l.tick = c.tick.Load()
	c.slots[s] = l
	c.queue = append(c.queue, l)
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

func (c *dataConn) writeLoop() {
	var batch []*ioLeg
	var scratch []byte
	var bufs net.Buffers
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

		// Headers and small payloads go into one buffer; large payloads
		// are separate iovecs (no copy).
		need := 0
		for _, l := range batch {
			need += rpReqHeader + len(l.name)
			if l.op != rpOpRead && l.op != rpOpReadLayer && len(l.data) <= copySmallLimit {
				need += len(l.data)
			}
		}
		if cap(scratch) < need {
			scratch = make([]byte, 0, max(need, 64<<10))
		}
		scratch = scratch[:0]
		iov = iov[:0]
		mark := 0
		for _, l := range batch {
			payload := len(l.name)
			write := l.op != rpOpRead && l.op != rpOpReadLayer
			if write {
				payload += len(l.data)
			}
			var h [rpReqHeader]byte
			h[0] = l.op
			binary.LittleEndian.PutUint32(h[4:], uint32(payload))
			binary.LittleEndian.PutUint64(h[8:], l.id)
			binary.LittleEndian.PutUint64(h[16:], l.off)
			binary.LittleEndian.PutUint64(h[24:], l.length)
			scratch = append(scratch, h[:]...)
			scratch = append(scratch, l.name...)
			if write && len(l.data) > 0 {
				if len(l.data) <= copySmallLimit {
					scratch = append(scratch, l.data...)
				} else {
					iov = append(iov, scratch[mark:], l.data)
					mark = len(scratch)
				}
			}
		}
		if mark < len(scratch) {
			iov = append(iov, scratch[mark:])
		}
		bufs = append(bufs[:0], iov...)
		_, err := bufs.WriteTo(c.conn)
		clear(batch) // drop references; the legs live in slots
		clear(iov)
		if err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *dataConn) readLoop() {
	br := bufio.NewReaderSize(c.conn, 256<<10)
	var hdr [rpRespHeader]byte
	var msg []byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			c.fail(err)
			return
		}
		status := hdr[1]
		n := int(binary.LittleEndian.Uint32(hdr[4:]))
		id := binary.LittleEndian.Uint64(hdr[8:])
		slot := uint32(id)
		if n > replica.MaxIO+256 || slot >= rpMaxSlots {
			c.fail(fmt.Errorf("%w: bad reply header", replica.ErrProtocol))
			return
		}
		c.mu.Lock()
		l := c.slots[slot]
		if l == nil || l.id != id {
			c.mu.Unlock()
			c.fail(fmt.Errorf("%w: reply for unknown request %#x", replica.ErrProtocol, id))
			return
		}
		c.slots[slot] = nil
		c.free = append(c.free, slot)
		c.mu.Unlock()
		var err error
		read := l.op == rpOpRead || l.op == rpOpReadLayer
		switch {
		case status == 0 && read && n == len(l.data):
			if _, err := io.ReadFull(br, l.data); err != nil {
				l.owner.ioDone(l, fmt.Errorf("%w: connection to %s lost: %v", replica.ErrClosed, c.addr, err))
				c.fail(err)
				return
			}
		default:
			if cap(msg) < n {
				msg = make([]byte, n)
			}
			msg = msg[:n]
			if _, err := io.ReadFull(br, msg); err != nil {
				l.owner.ioDone(l, fmt.Errorf("%w: connection to %s lost: %v", replica.ErrClosed, c.addr, err))
				c.fail(err)
				return
			}
			if status != 0 {
				err = &replica.RemoteError{Status: status, Message: string(msg)}
			} else if read {
				err = fmt.Errorf("%w: short read reply (%d of %d bytes)", replica.ErrProtocol, n, len(l.data))
			}
		}
		l.owner.ioDone(l, mapErr(err))
	}
}

// watchdogPeriod is the resolution of I/O timeouts.
const watchdogPeriod = 50 * time.Millisecond

// setTimeout sets the I/O timeout (default 10s).
func (c *dataConn) setTimeout(d time.Duration) {
	if d <= 0 {
		d = 10 * time.Second
	}
	c.timeout.Store(int64(d))
}

// watchdog fails the connection when a leg has waited longer than the
// timeout. Legs carry the tick they were queued at, so the I/O path reads
// no clock.
func (c *dataConn) watchdog() {
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
		limit := int64(timeout/watchdogPeriod) + 1
		c.mu.Lock()
		late := false
		for _, l := range c.slots {
			if l != nil && now-l.tick > limit {
				late = true
				break
			}
		}
		c.mu.Unlock()
		if late {
			c.fail(fmt.Errorf("%w after %v (context deadline exceeded)", errConnTimeout, timeout))
			return
		}
	}
}

func (c *dataConn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if !errors.Is(err, replica.ErrClosed) {
		err = fmt.Errorf("%w: connection to %s lost: %w", replica.ErrClosed, c.addr, err)
	}
	c.err = err
	close(c.done)
	c.mu.Unlock()
	c.conn.Close()
}

// completeAll runs after reader and writer stopped: every leg still
// waiting fails with the connection's error.
func (c *dataConn) completeAll() {
	c.mu.Lock()
	err := c.err
	var legs []*ioLeg
	for i, l := range c.slots {
		if l != nil {
			legs = append(legs, l)
			c.slots[i] = nil
		}
	}
	c.queue = nil
	c.mu.Unlock()
	for _, l := range legs {
		l.owner.ioDone(l, err)
	}
	close(c.finished)
}

// Close fails every pending leg and waits until they are completed.
func (c *dataConn) Close() error {
	c.fail(replica.ErrClosed)
	<-c.finished
	return nil
}

// waiter is the owner of a synchronous call.
type waiter struct {
	ch  chan struct{}
	err atomic.Pointer[error]
	n   atomic.Int32
}

func (w *waiter) ioDone(_ *ioLeg, err error) {
	if err != nil {
		w.err.CompareAndSwap(nil, &err)
	}
	if w.n.Add(-1) == 0 {
		close(w.ch)
	}
}

// do runs one data operation synchronously, split into frames of at most
// replica.MaxIO bytes. The legs are not cancelled by ctx: the watchdog
// bounds them, and a leg's buffer must stay untouched until it completes.
func (c *dataConn) do(ctx context.Context, op uint8, name string, data []byte, off, length int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if off < 0 || length < 0 {
		return fmt.Errorf("%w: negative offset or length", replica.ErrOutOfRange)
	}
	var prefix []byte
	if name != "" || op == rpOpReadLayer || op == rpOpWriteLayer {
		if len(name) > 255 {
			return fmt.Errorf("%w: layer name too long", replica.ErrInvalid)
		}
		prefix = append([]byte{byte(len(name))}, name...)
	}
	withData := op == rpOpRead || op == rpOpWrite || op == rpOpReadLayer || op == rpOpWriteLayer
	var legs []ioLeg
	if withData && len(data) > replica.MaxIO {
		legs = make([]ioLeg, (len(data)+replica.MaxIO-1)/replica.MaxIO)
	} else {
		legs = make([]ioLeg, 1)
	}
	w := &waiter{ch: make(chan struct{})}
	w.n.Store(int32(len(legs)))
	for i := range legs {
		l := &legs[i]
		l.op, l.name, l.owner = op, prefix, w
		if withData {
			lo := i * replica.MaxIO
			hi := min(len(data), lo+replica.MaxIO)
			l.data, l.off, l.length = data[lo:hi], uint64(off)+uint64(lo), uint64(hi-lo)
		} else {
			l.off, l.length = uint64(off), uint64(length)
		}
	}
	for i := range legs {
		c.submit(&legs[i])
	}
	<-w.ch
	if p := w.err.Load(); p != nil {
		return *p
	}
	return nil
}
