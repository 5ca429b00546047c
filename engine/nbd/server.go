package nbd

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/internal/netx"
)

// MaxPayload is the largest READ or WRITE the server accepts (and announces
// as the maximum block size).
const MaxPayload = 32 << 20

// Default in-flight byte budgets (see Server).
const (
	DefaultMaxConnBytes = 64 << 20
	DefaultMaxBytes     = 256 << 20
)

// Server serves one Backend as one export over any number of connections.
type Server struct {
	// Export is the export name; the empty name also selects it.
	Export string
	// Backend is the device served.
	Backend engine.Backend
	// MaxInFlight bounds concurrently executing requests per connection
	// (default 128).
	MaxInFlight int
	// HandshakeTimeout bounds the negotiation phase (default 30s).
	HandshakeTimeout time.Duration
	// MaxUnauthenticated caps connections still negotiating (default
	// netx.DefaultMaxUnauthenticated); more are closed on accept.
	MaxUnauthenticated int
	// MaxConnBytes bounds the READ and WRITE bytes one connection holds
	// until their replies are written (default DefaultMaxConnBytes): the
	// server stops reading that connection's requests beyond it.
	MaxConnBytes int64
	// MaxBytes bounds the bytes all connections hold together (default
	// DefaultMaxBytes).
	MaxBytes int64
	// Log receives connection-level events.
	Log logr.Logger

	initOnce sync.Once
	bytes    *netx.Budget
	closeLog *netx.LogLimiter

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Listen opens "unix:PATH" (mode 0600, replacing a stale socket) or
// "host:port".
func Listen(addr string) (net.Listener, error) { return netx.Listen(addr) }

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.bytes = netx.NewBudget(cmp.Or(s.MaxBytes, DefaultMaxBytes))
		s.closeLog = netx.NewLogLimiter(time.Second, s.Log.Info)
	})
}

// inFlightBytes is the number of bytes all connections hold.
func (s *Server) inFlightBytes() int64 {
	s.init()
	return s.bytes.InUse()
}

// Serve accepts connections until ctx is done or the listener fails, then
// closes the listener and every connection and waits for them. Running
// out of file descriptors only delays accepting.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	cfg := netx.Config{MaxUnauthenticated: s.MaxUnauthenticated, Log: s.Log.Info}
	return netx.Serve(ctx, ln, cfg, func(c net.Conn, negotiated func()) {
		s.serveConn(ctx, c, negotiated)
	})
}

func (s *Server) track(c net.Conn, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

// Connections is the number of connected clients.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// ServeConn runs the handshake and transmission phases on one connection
// and closes it when done.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	s.serveConn(ctx, nc, func() {})
}

// serveConn is ServeConn; it calls negotiated when the handshake is done.
func (s *Server) serveConn(ctx context.Context, nc net.Conn, negotiated func()) {
	s.init()
	s.track(nc, true)
	defer s.track(nc, false)
	defer nc.Close()
	// Connections from Serve read and write with raw system calls
	// (netx.RawIO); Go sets TCP_NODELAY on TCP connections itself.
	c := &conn{
		s:  s,
		nc: nc,
		r:  bufio.NewReaderSize(nc, 256<<10),
		w:  bufio.NewWriterSize(nc, 256<<10),
	}
	log := s.Log.WithValues("remote", nc.RemoteAddr().String())
	hto := s.HandshakeTimeout
	if hto == 0 {
		hto = 30 * time.Second
	}
	_ = nc.SetDeadline(time.Now().Add(hto))
	ok, err := c.handshake()
	if err != nil {
		log.V(1).Info("NBD handshake failed", "err", err.Error())
		return
	}
	if !ok {
		return
	}
	_ = nc.SetDeadline(time.Time{})
	negotiated()
	log.V(1).Info("NBD client connected", "structuredReplies", c.structured)
	if err := c.transmit(ctx); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		s.closeLog.Log("NBD connection closed", "remote", nc.RemoteAddr().String(), "err", err.Error())
	}
}

type conn struct {
	s          *Server
	nc         net.Conn
	r          *bufio.Reader
	w          *bufio.Writer
	structured bool
	noZeroes   bool

	// Replies: completions queue them, one writer goroutine sends every
	// queued reply with one flush (see replyLoop).
	qmu   sync.Mutex
	queue []*request
	idle  bool
	stop  bool
	qwake chan struct{}
	werr  error // only the writer touches it
	// bytes bounds the READ and WRITE bytes this connection holds.
	bytes *netx.Budget
	// release ends a request that holds n bytes.
	release func(n int64)
}

// --- handshake -------------------------------------------------------------

func (c *conn) handshake() (bool, error) {
	var hdr [18]byte
	binary.BigEndian.PutUint64(hdr[0:], nbdMagic)
	binary.BigEndian.PutUint64(hdr[8:], optMagic)
	binary.BigEndian.PutUint16(hdr[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.w.Write(hdr[:]); err != nil {
		return false, err
	}
	if err := c.w.Flush(); err != nil {
		return false, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return false, err
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&cflagFixed == 0 {
		return false, fmt.Errorf("client does not support fixed newstyle (flags %#x)", flags)
	}
	if flags&^uint32(cflagFixed|cflagNoZeroes) != 0 {
		return false, fmt.Errorf("unknown client flags %#x", flags)
	}
	c.noZeroes = flags&cflagNoZeroes != 0
	for {
		var oh [16]byte
		if _, err := io.ReadFull(c.r, oh[:]); err != nil {
			return false, err
		}
		if m := binary.BigEndian.Uint64(oh[0:]); m != optMagic {
			return false, fmt.Errorf("bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(oh[8:])
		n := binary.BigEndian.Uint32(oh[12:])
		if n > maxOptionLen {
			return false, fmt.Errorf("option %d too long (%d bytes)", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return false, err
		}
		done, err := c.option(opt, data)
		if err != nil || done {
			return done, err
		}
	}
}

func (c *conn) transmissionFlags() uint16 {
	return tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagWriteZeroes |
		tflagFastZero | tflagSendDF | tflagCanMultiConn | tflagSendCache
}

// option handles one option; it returns true when transmission starts.
func (c *conn) option(opt uint32, data []byte) (bool, error) {
	switch opt {
	case optExportName:
		if !c.exportOK(string(data)) {
			return false, fmt.Errorf("unknown export %q", data)
		}
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(c.s.Backend.Size()))
		binary.BigEndian.PutUint16(b[8:], c.transmissionFlags())
		out := b[:]
		if c.noZeroes {
			out = b[:10]
		}
		if _, err := c.w.Write(out); err != nil {
			return false, err
		}
		return true, c.w.Flush()
	case optAbort:
		_ = c.optReply(opt, repAck, nil)
		return false, errors.New("client aborted negotiation")
	case optList:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, []byte("LIST takes no data"))
		}
		name := []byte(c.s.Export)
		p := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
		if err := c.optReply(opt, repServer, append(p, name...)); err != nil {
			return false, err
		}
		return false, c.optReply(opt, repAck, nil)
	case optStructuredReply:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, []byte("STRUCTURED_REPLY takes no data"))
		}
		c.structured = true
		return false, c.optReply(opt, repAck, nil)
	case optInfo, optGo:
		if len(data) < 6 {
			return false, c.optReply(opt, repErrInvalid, []byte("short INFO/GO request"))
		}
		nl := binary.BigEndian.Uint32(data)
		if uint64(nl)+6 > uint64(len(data)) {
			return false, c.optReply(opt, repErrInvalid, []byte("bad name length"))
		}
		name := string(data[4 : 4+nl])
		nreq := binary.BigEndian.Uint16(data[4+nl:])
		if int(6+nl)+2*int(nreq) != len(data) {
			return false, c.optReply(opt, repErrInvalid, []byte("bad info request count"))
		}
		if !c.exportOK(name) {
			return false, c.optReply(opt, repErrUnknown, []byte("unknown export "+name))
		}
		wantName := false
		for i := 0; i < int(nreq); i++ {
			if binary.BigEndian.Uint16(data[int(6+nl)+2*i:]) == infoName {
				wantName = true
			}
		}
		exp := binary.BigEndian.AppendUint16(nil, infoExport)
		exp = binary.BigEndian.AppendUint64(exp, uint64(c.s.Backend.Size()))
		exp = binary.BigEndian.AppendUint16(exp, c.transmissionFlags())
		if err := c.optReply(opt, repInfo, exp); err != nil {
			return false, err
		}
		bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
		bs = binary.BigEndian.AppendUint32(bs, 1)
		bs = binary.BigEndian.AppendUint32(bs, 4096)
		bs = binary.BigEndian.AppendUint32(bs, MaxPayload)
		if err := c.optReply(opt, repInfo, bs); err != nil {
			return false, err
		}
		if wantName {
			nm := binary.BigEndian.AppendUint16(nil, infoName)
			if err := c.optReply(opt, repInfo, append(nm, c.s.Export...)); err != nil {
				return false, err
			}
		}
		if err := c.optReply(opt, repAck, nil); err != nil {
			return false, err
		}
		return opt == optGo, nil
	case optStartTLS:
		return false, c.optReply(opt, repErrPolicy, []byte("TLS is not supported; use a unix socket or a private network"))
	default:
		return false, c.optReply(opt, repErrUnsup, nil)
	}
}

func (c *conn) exportOK(name string) bool { return name == "" || name == c.s.Export }

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], optReplyMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	if _, err := c.w.Write(h[:]); err != nil {
		return err
	}
	if _, err := c.w.Write(data); err != nil {
		return err
	}
	return c.w.Flush()
}

// --- transmission ----------------------------------------------------------

// request is one NBD request from reading to its reply.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
	buf    []byte // write data, then read data for the reply
	held   int64  // budget bytes held until the reply is written

	// reply
	errno uint32
	msg   string

	c  *conn
	er engine.Request
}

var requestPool = sync.Pool{New: func() any {
	rq := &request{}
	rq.er.Tag = rq
	rq.er.Done = asyncDone
	return rq
}}

func (c *conn) transmit(ctx context.Context) error {
	max := c.s.MaxInFlight
	if max <= 0 {
		max = 128
	}
	sem := make(chan struct{}, max)
	var inflight sync.WaitGroup
	c.qwake = make(chan struct{}, 1)
	c.bytes = netx.NewBudget(cmp.Or(c.s.MaxConnBytes, DefaultMaxConnBytes))
	c.release = func(n int64) {
		if n > 0 {
			c.bytes.Release(n)
			c.s.bytes.Release(n)
		}
		<-sem
		inflight.Done()
	}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.replyLoop()
	}()
	defer func() {
		inflight.Wait()
		c.qmu.Lock()
		c.stop = true
		c.qmu.Unlock()
		c.signal()
		<-writerDone
	}()
	async, _ := c.s.Backend.(engine.AsyncBackend)
	size := uint64(c.s.Backend.Size())
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return err
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != requestMagic {
			return fmt.Errorf("bad request magic %#x", m)
		}
		rq := requestPool.Get().(*request)
		rq.c = c
		rq.flags = binary.BigEndian.Uint16(hdr[4:])
		rq.typ = binary.BigEndian.Uint16(hdr[6:])
		rq.handle = binary.BigEndian.Uint64(hdr[8:])
		rq.off = binary.BigEndian.Uint64(hdr[16:])
		rq.length = binary.BigEndian.Uint32(hdr[24:])
		rq.buf, rq.errno, rq.msg, rq.held = nil, 0, "", 0
		// Every request holds a slot until its reply is written.
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		inflight.Add(1)
		inRange := rq.off <= size && uint64(rq.length) <= size-rq.off
		switch rq.typ {
		case cmdDisc:
			c.release(0)
			requestPool.Put(rq)
			return io.EOF
		case cmdWrite:
			if rq.length > MaxPayload || !inRange {
				// Consume the payload so the stream stays in sync.
				if _, err := io.CopyN(io.Discard, c.r, int64(rq.length)); err != nil {
					c.release(0)
					return err
				}
				e := uint32(errNoSpc)
				if rq.length > MaxPayload {
					e = errOverflow
				}
				c.replyErr(rq, e, "write out of range or too large")
				continue
			}
			if err := c.hold(ctx, rq); err != nil {
				c.release(0)
				return err
			}
			rq.buf = getBuf(int(rq.length))
			if _, err := io.ReadFull(c.r, rq.buf); err != nil {
				putBuf(rq.buf)
				c.release(rq.held)
				return err
			}
		case cmdRead:
			if rq.length > MaxPayload || !inRange {
				e := uint32(errInval)
				if rq.length > MaxPayload {
					e = errOverflow
				}
				if rq.length > MaxPayload && !c.structured {
					// Cannot send that much filler: a hard disconnect is
					// the protocol's only other option.
					c.release(0)
					return fmt.Errorf("oversized read of %d bytes with simple replies", rq.length)
				}
				c.replyErr(rq, e, "read out of range or too large")
				continue
			}
			if err := c.hold(ctx, rq); err != nil {
				c.release(0)
				return err
			}
		case cmdTrim, cmdWriteZeroes, cmdCache:
			if !inRange {
				e := uint32(errInval)
				if rq.typ == cmdWriteZeroes {
					e = errNoSpc
				}
				c.replyErr(rq, e, "request out of range")
				continue
			}
		case cmdFlush:
		default:
			c.replyErr(rq, errInval, fmt.Sprintf("unsupported command %d", rq.typ))
			continue
		}
		if async != nil && rq.typ != cmdCache {
			c.submit(async, rq, false)
			continue
		}
		go c.execute(ctx, rq)
	}
}

// hold takes the request's data bytes from the connection's budget, then
// from the server's, waiting while either is spent.
func (c *conn) hold(ctx context.Context, rq *request) error {
	n := int64(rq.length)
	if err := c.bytes.Acquire(ctx, n); err != nil {
		return err
	}
	if err := c.s.bytes.Acquire(ctx, n); err != nil {
		c.bytes.Release(n)
		return err
	}
	rq.held = n
	return nil
}

// submit hands a request to an asynchronous backend; fuaFlush is the
// flush that follows a FUA write.
func (c *conn) submit(b engine.AsyncBackend, rq *request, fuaFlush bool) {
	er := &rq.er
	er.Buf, er.Off, er.Length = nil, int64(rq.off), int64(rq.length)
	switch {
	case fuaFlush || rq.typ == cmdFlush:
		er.Op = engine.IOFlush
	case rq.typ == cmdRead:
		rq.buf = getBuf(int(rq.length))
		er.Op, er.Buf = engine.IORead, rq.buf
	case rq.typ == cmdWrite:
		er.Op, er.Buf = engine.IOWrite, rq.buf
	case rq.typ == cmdTrim:
		er.Op = engine.IOTrim
	case rq.typ == cmdWriteZeroes:
		er.Op = engine.IOWriteZeroes
	}
	b.Submit(er)
}

// asyncDone completes a request on the backend's goroutine: it must not
// block, so a FUA flush is issued from a new goroutine.
func asyncDone(er *engine.Request, err error) {
	rq := er.Tag.(*request)
	c := rq.c
	if err == nil && er.Op != engine.IOFlush && er.Op != engine.IORead && rq.flags&cmdFlagFUA != 0 {
		if b, ok := c.s.Backend.(engine.AsyncBackend); ok {
			go c.submit(b, rq, true)
			return
		}
	}
	c.finish(rq, err)
}

func (c *conn) finish(rq *request, err error) {
	if rq.typ == cmdWrite {
		putBuf(rq.buf)
		rq.buf = nil
	}
	if err != nil {
		if rq.typ == cmdRead {
			putBuf(rq.buf)
			rq.buf = nil
		}
		c.replyErr(rq, errnoOf(err), err.Error())
		return
	}
	c.enqueue(rq)
}

// execute runs a request on a backend without Submit.
func (c *conn) execute(ctx context.Context, rq *request) {
	b := c.s.Backend
	off := int64(rq.off)
	var err error
	switch rq.typ {
	case cmdRead:
		rq.buf = getBuf(int(rq.length))
		err = b.ReadAt(ctx, rq.buf, off)
	case cmdWrite:
		err = b.WriteAt(ctx, rq.buf, off)
		if err == nil && rq.flags&cmdFlagFUA != 0 {
			err = b.Flush(ctx)
		}
	case cmdFlush:
		err = b.Flush(ctx)
	case cmdTrim:
		err = b.Trim(ctx, off, int64(rq.length))
		if err == nil && rq.flags&cmdFlagFUA != 0 {
			err = b.Flush(ctx)
		}
	case cmdWriteZeroes:
		err = b.WriteZeroes(ctx, off, int64(rq.length))
		if err == nil && rq.flags&cmdFlagFUA != 0 {
			err = b.Flush(ctx)
		}
	case cmdCache:
	}
	c.finish(rq, err)
}

func errnoOf(err error) uint32 {
	switch {
	case errors.Is(err, engine.ErrOutOfRange):
		return errInval
	case errors.Is(err, engine.ErrClosed), errors.Is(err, context.Canceled):
		return errShutdown
	default:
		return errIO
	}
}

// replyErr queues an error reply.
func (c *conn) replyErr(rq *request, errno uint32, msg string) {
	if errno == 0 {
		errno = errIO
	}
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	rq.errno, rq.msg = errno, msg
	c.enqueue(rq)
}

func (c *conn) enqueue(rq *request) {
	c.qmu.Lock()
	c.queue = append(c.queue, rq)
	wake := c.idle
	c.idle = false
	c.qmu.Unlock()
	if wake {
		c.signal()
	}
}

func (c *conn) signal() {
	select {
	case c.qwake <- struct{}{}:
	default:
	}
}

// replyLoop writes every queued reply into the buffered writer and flushes
// once per batch, so a burst of completions costs one syscall. After a
// write error it keeps draining (and releasing) replies without sending.
func (c *conn) replyLoop() {
	var batch []*request
	for {
		c.qmu.Lock()
		for len(c.queue) == 0 && !c.stop {
			c.idle = true
			c.qmu.Unlock()
			<-c.qwake
			c.qmu.Lock()
		}
		if len(c.queue) == 0 {
			c.qmu.Unlock()
			return
		}
		batch, c.queue = c.queue, batch[:0]
		c.qmu.Unlock()
		for _, rq := range batch {
			if c.werr == nil {
				c.werr = c.writeReply(c.w, rq)
			}
			if rq.typ == cmdRead {
				putBuf(rq.buf)
			}
			held := rq.held
			rq.buf, rq.c, rq.msg = nil, nil, ""
			requestPool.Put(rq)
			c.release(held)
		}
		clear(batch)
		if c.werr == nil {
			c.werr = c.w.Flush()
		}
		if c.werr != nil {
			c.nc.Close()
		}
	}
}

func (c *conn) writeReply(w *bufio.Writer, rq *request) error {
	if rq.errno == 0 {
		if rq.typ != cmdRead {
			return writeSimple(w, rq.handle, 0)
		}
		if !c.structured {
			if err := writeSimple(w, rq.handle, 0); err != nil {
				return err
			}
			_, err := w.Write(rq.buf)
			return err
		}
		var h [28]byte
		binary.BigEndian.PutUint32(h[0:], structuredMagc)
		binary.BigEndian.PutUint16(h[4:], replyFlagDone)
		binary.BigEndian.PutUint16(h[6:], replyTypeData)
		binary.BigEndian.PutUint64(h[8:], rq.handle)
		binary.BigEndian.PutUint32(h[16:], uint32(8+len(rq.buf)))
		binary.BigEndian.PutUint64(h[20:], rq.off)
		if _, err := w.Write(h[:]); err != nil {
			return err
		}
		_, err := w.Write(rq.buf)
		return err
	}
	// Errors: simple replies, except that a failed READ needs a structured
	// error chunk, or with simple replies length bytes of filler.
	if !c.structured {
		if err := writeSimple(w, rq.handle, rq.errno); err != nil {
			return err
		}
		if rq.typ == cmdRead {
			_, err := io.CopyN(w, zeroReader{}, int64(rq.length))
			return err
		}
		return nil
	}
	if rq.typ != cmdRead {
		return writeSimple(w, rq.handle, rq.errno)
	}
	var h [26]byte
	binary.BigEndian.PutUint32(h[0:], structuredMagc)
	binary.BigEndian.PutUint16(h[4:], replyFlagDone)
	binary.BigEndian.PutUint16(h[6:], replyTypeError)
	binary.BigEndian.PutUint64(h[8:], rq.handle)
	binary.BigEndian.PutUint32(h[16:], uint32(6+len(rq.msg)))
	binary.BigEndian.PutUint32(h[20:], rq.errno)
	binary.BigEndian.PutUint16(h[24:], uint16(len(rq.msg)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.WriteString(rq.msg)
	return err
}

func writeSimple(w *bufio.Writer, handle uint64, errno uint32) error {
	var h [16]byte
	binary.BigEndian.PutUint32(h[0:], simpleMagic)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], handle)
	_, err := w.Write(h[:])
	return err
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
