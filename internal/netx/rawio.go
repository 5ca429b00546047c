package netx

import (
	"io"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/internal/rawsys"
)

// Socket I/O without the scheduler's system-call bookkeeping (package
// rawsys says why that matters). A non-blocking socket never blocks in
// read or write: it returns EAGAIN instead, and the connection then waits
// in the runtime's poller as before. So RawIO's connections make those
// calls raw, inside syscall.RawConn's Read and Write, which keep deadlines
// and Close working.

// RawIO returns c with Read and Write (and WriteBuffers, one writev)
// made as raw system calls, or c itself when it has no descriptor (a
// net.Pipe in tests). Everything else is c's.
func RawIO(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{Conn: c, rc: rc, r: rawsys.NewReader(rc, 0)}
	r.w.fn = r.w.write
	return r
}

type rawConn struct {
	net.Conn
	rc syscall.RawConn
	r  *rawsys.Reader
	w  rawWrite
}

// rawWrite is the state of the Write or WriteBuffers in progress, so that
// the function handed to syscall.RawConn.Write is made once, not per
// call. mu serializes writers (net.Conn allows concurrent ones).
type rawWrite struct {
	mu    sync.Mutex
	fn    func(fd uintptr) bool
	buf   []byte
	iov   []unix.Iovec
	bufs  [][]byte
	n     int
	errno syscall.Errno
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, errno, err := c.r.Read(p)
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *rawConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := c.send(p, nil)
	return int(n), err
}

// opError is a failed system call's error as net.Conn reports it.
func (c *rawConn) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errno}
}

// write is the RawConn.Write function for Write and WriteBuffers: it
// writes until everything is sent (true), the socket is full (false: the
// poller waits until it is writable) or a write fails (true).
func (op *rawWrite) write(fd uintptr) bool {
	for {
		var n int
		var e syscall.Errno
		if op.buf != nil {
			rest := op.buf[op.n:]
			if len(rest) == 0 {
				return true
			}
			n, e = rawsys.Write(fd, rest)
		} else {
			if op.iov = rawsys.Iovecs(op.iov[:0], op.bufs, op.n); len(op.iov) == 0 {
				return true
			}
			n, e = rawsys.Writev(fd, op.iov)
		}
		switch e {
		case 0:
			op.n += n
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			op.errno = e
			return true
		}
	}
}

// WriteBuffers writes every byte of bufs with writev(2) and returns how
// many were written.
func (c *rawConn) WriteBuffers(bufs [][]byte) (int64, error) { return c.send(nil, bufs) }

// send writes all of p (non-empty), or else of bufs, through rc.Write.
func (c *rawConn) send(p []byte, bufs [][]byte) (int64, error) {
	op := &c.w
	op.mu.Lock()
	defer op.mu.Unlock()
	op.buf, op.bufs, op.n, op.errno = p, bufs, 0, 0
	err := c.rc.Write(op.fn)
	n, errno := op.n, op.errno
	op.buf, op.bufs = nil, nil
	clear(op.iov[:cap(op.iov)])
	if err == nil && errno != 0 {
		err = c.opError("write", errno)
	}
	return int64(n), err
}

// WriteBuffers writes bufs to w: with one writev when w is a RawIO
// connection, else as net.Buffers does.
func WriteBuffers(w io.Writer, bufs [][]byte) (int64, error) {
	if rc, ok := w.(*rawConn); ok {
		return rc.WriteBuffers(bufs)
	}
	b := net.Buffers(bufs)
	return b.WriteTo(w)
}
