package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/cairnstore/cairn/engine"
)

// MaxPayload is the largest READ or WRITE the server accepts (and announces
// as the maximum block size).
const MaxPayload = 32 << 20

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
	// Log receives connection-level events.
	Log logr.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// Listen opens "unix:PATH" (removing a stale socket) or "host:port".
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(path)
		}
		return net.Listen("unix", path)
	}
	return net.Listen("tcp", addr)
}

// Serve accepts connections until ctx is done or the listener fails, then
// closes the listener and every connection and waits for them.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer s.closeAll()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.ServeConn(ctx, c)
		}()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
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
	s.track(nc, true)
	defer s.track(nc, false)
	defer nc.Close()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
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
	log.V(1).Info("NBD client connected", "structuredReplies", c.structured)
	if err := c.transmit(ctx); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		log.Info("NBD connection closed", "err", err.Error())
	}
}

type conn struct {
	s          *Server
	nc         net.Conn
	r          *bufio.Reader
	w          *bufio.Writer
	structured bool
	noZeroes   bool

	wmu     sync.Mutex
	waiting atomic.Int32
	werr    error
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

type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
	buf    []byte
}

func (c *conn) transmit(ctx context.Context) error {
	max := c.s.MaxInFlight
	if max <= 0 {
		max = 128
	}
	sem := make(chan struct{}, max)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	size := uint64(c.s.Backend.Size())
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return err
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != requestMagic {
			return fmt.Errorf("bad request magic %#x", m)
		}
		rq := &request{
			flags:  binary.BigEndian.Uint16(hdr[4:]),
			typ:    binary.BigEndian.Uint16(hdr[6:]),
			handle: binary.BigEndian.Uint64(hdr[8:]),
			off:    binary.BigEndian.Uint64(hdr[16:]),
			length: binary.BigEndian.Uint32(hdr[24:]),
		}
		inRange := rq.off <= size && uint64(rq.length) <= size-rq.off
		switch rq.typ {
		case cmdDisc:
			inflight.Wait()
			return io.EOF
		case cmdWrite:
			if rq.length > MaxPayload || !inRange {
				// Consume the payload so the stream stays in sync.
				if _, err := io.CopyN(io.Discard, c.r, int64(rq.length)); err != nil {
					return err
				}
				e := uint32(errNoSpc)
				if rq.length > MaxPayload {
					e = errOverflow
				}
				if err := c.replyErr(rq, e, "write out of range or too large"); err != nil {
					return err
				}
				continue
			}
			rq.buf = getBuf(int(rq.length))
			if _, err := io.ReadFull(c.r, rq.buf); err != nil {
				putBuf(rq.buf)
				return err
			}
		case cmdRead:
			if rq.length > MaxPayload || !inRange {
				e := uint32(errInval)
				if rq.length > MaxPayload {
					e = errOverflow
				}
				if err := c.replyErr(rq, e, "read out of range or too large"); err != nil {
					return err
				}
				continue
			}
		case cmdTrim, cmdWriteZeroes, cmdCache:
			if !inRange {
				e := uint32(errInval)
				if rq.typ == cmdWriteZeroes {
					e = errNoSpc
				}
				if err := c.replyErr(rq, e, "request out of range"); err != nil {
					return err
				}
				continue
			}
		case cmdFlush:
		default:
			if err := c.replyErr(rq, errInval, fmt.Sprintf("unsupported command %d", rq.typ)); err != nil {
				return err
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			putBuf(rq.buf)
			return ctx.Err()
		}
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-sem }()
			c.execute(ctx, rq)
		}()
	}
}

func (c *conn) execute(ctx context.Context, rq *request) {
	b := c.s.Backend
	off := int64(rq.off)
	var err error
	switch rq.typ {
	case cmdRead:
		buf := getBuf(int(rq.length))
		if err = b.ReadAt(ctx, buf, off); err == nil {
			_ = c.replyRead(rq, buf)
			putBuf(buf)
			return
		}
		putBuf(buf)
	case cmdWrite:
		err = b.WriteAt(ctx, rq.buf, off)
		putBuf(rq.buf)
		rq.buf = nil
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
	if err != nil {
		_ = c.replyErr(rq, errnoOf(err), err.Error())
		return
	}
	_ = c.replySimple(rq.handle, 0)
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

// send serialises reply writers and flushes the buffered writer when no
// other reply is waiting, so bursts of replies share syscalls.
func (c *conn) send(fn func(w *bufio.Writer) error) error {
	c.waiting.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr == nil {
		c.werr = fn(c.w)
	}
	if c.waiting.Add(-1) == 0 && c.werr == nil {
		c.werr = c.w.Flush()
	}
	if c.werr != nil {
		c.nc.Close()
	}
	return c.werr
}

func (c *conn) replySimple(handle uint64, errno uint32) error {
	return c.send(func(w *bufio.Writer) error {
		var h [16]byte
		binary.BigEndian.PutUint32(h[0:], simpleMagic)
		binary.BigEndian.PutUint32(h[4:], errno)
		binary.BigEndian.PutUint64(h[8:], handle)
		_, err := w.Write(h[:])
		return err
	})
}

func (c *conn) replyRead(rq *request, data []byte) error {
	return c.send(func(w *bufio.Writer) error {
		if !c.structured {
			var h [16]byte
			binary.BigEndian.PutUint32(h[0:], simpleMagic)
			binary.BigEndian.PutUint64(h[8:], rq.handle)
			if _, err := w.Write(h[:]); err != nil {
				return err
			}
			_, err := w.Write(data)
			return err
		}
		var h [28]byte
		binary.BigEndian.PutUint32(h[0:], structuredMagc)
		binary.BigEndian.PutUint16(h[4:], replyFlagDone)
		binary.BigEndian.PutUint16(h[6:], replyTypeData)
		binary.BigEndian.PutUint64(h[8:], rq.handle)
		binary.BigEndian.PutUint32(h[16:], uint32(8+len(data)))
		binary.BigEndian.PutUint64(h[20:], rq.off)
		if _, err := w.Write(h[:]); err != nil {
			return err
		}
		_, err := w.Write(data)
		return err
	})
}

// replyErr sends an error reply. A failed READ needs a structured error
// chunk, or with simple replies length bytes of filler after the header.
func (c *conn) replyErr(rq *request, errno uint32, msg string) error {
	if rq.typ != cmdRead {
		if !c.structured {
			return c.replySimple(rq.handle, errno)
		}
	}
	if !c.structured {
		if rq.length > MaxPayload {
			// Cannot send that much filler: a hard disconnect is the
			// protocol's only other option.
			c.nc.Close()
			return fmt.Errorf("oversized read of %d bytes with simple replies", rq.length)
		}
		return c.send(func(w *bufio.Writer) error {
			var h [16]byte
			binary.BigEndian.PutUint32(h[0:], simpleMagic)
			binary.BigEndian.PutUint32(h[4:], errno)
			binary.BigEndian.PutUint64(h[8:], rq.handle)
			if _, err := w.Write(h[:]); err != nil {
				return err
			}
			_, err := io.CopyN(w, zeroReader{}, int64(rq.length))
			return err
		})
	}
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	return c.send(func(w *bufio.Writer) error {
		var h [26]byte
		binary.BigEndian.PutUint32(h[0:], structuredMagc)
		binary.BigEndian.PutUint16(h[4:], replyFlagDone)
		binary.BigEndian.PutUint16(h[6:], replyTypeError)
		binary.BigEndian.PutUint64(h[8:], rq.handle)
		binary.BigEndian.PutUint32(h[16:], uint32(6+len(msg)))
		binary.BigEndian.PutUint32(h[20:], errno)
		binary.BigEndian.PutUint16(h[24:], uint16(len(msg)))
		if _, err := w.Write(h[:]); err != nil {
			return err
		}
		_, err := w.WriteString(msg)
		return err
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
