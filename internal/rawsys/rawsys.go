// Package rawsys makes the data path's system calls that cannot block
// without the scheduler's system-call bookkeeping.
//
// Go makes a system call through syscall.Syscall, which tells the
// scheduler the goroutine may block: the scheduler may hand the
// goroutine's P to another thread, and when the process was idle it wakes
// the runtime's monitor thread (sysmon), which then polls every 20 µs
// until the process is idle again. A data-plane process serving thousands
// of small requests a second goes idle and busy thousands of times a
// second: perf showed the monitor thread alone at 20-25% of the engine's
// and the replicas' CPU in a 4 KiB random-write benchmark, each poll and
// each wake-up a context switch.
//
// A read or write of a non-blocking socket or /dev/fuse descriptor never
// waits (it returns EAGAIN instead), nor does a read with RWF_NOWAIT, and
// a buffered write of a few pages copies into the page cache and waits
// only when the kernel throttles the writer for dirty pages; the data path
// makes those with RawSyscall through this package. A raw call keeps its
// P while in the kernel (the process's other Ps run everything else) and
// a garbage collection stopping the world waits for it, so a call that
// can wait for an event (poll, a blocking read, fdatasync, anything a FUSE
// server in the same process must answer) must not be raw.
package rawsys

import (
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxIov is the most iovecs one writev takes (IOV_MAX).
const MaxIov = 1024

// Read is read(2) of len(p) > 0 bytes.
func Read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

// Write is write(2) of len(p) > 0 bytes.
func Write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

// Writev is writev(2) of len(iov) > 0 iovecs (see Iovecs).
func Writev(fd uintptr, iov []unix.Iovec) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	return int(n), e
}

// Pwrite is pwrite(2) of len(p) > 0 bytes at off.
func Pwrite(fd uintptr, p []byte, off int64) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_PWRITE64, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(off), 0, 0)
	return int(n), e
}

// Preadv2 is preadv2(2) of len(p) > 0 bytes at off with flags (RWF_NOWAIT:
// only what the page cache holds).
func Preadv2(fd uintptr, p []byte, off int64, flags int) (int, syscall.Errno) {
	var v unix.Iovec
	v.Base = &p[0]
	v.SetLen(len(p))
	n, _, e := unix.RawSyscall6(unix.SYS_PREADV2, fd, uintptr(unsafe.Pointer(&v)), 1, uintptr(off), 0, uintptr(flags))
	return int(n), e
}

// Iovecs appends to dst the iovecs of bufs after their first skip bytes,
// leaving out empty ones, at most MaxIov in all.
func Iovecs(dst []unix.Iovec, bufs [][]byte, skip int) []unix.Iovec {
	for _, b := range bufs {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b, skip = b[skip:], 0
		var v unix.Iovec
		v.Base = &b[0]
		v.SetLen(len(b))
		dst = append(dst, v)
		if len(dst) == MaxIov {
			break
		}
	}
	return dst
}

// Reader reads a descriptor that waits in the Go poller (a socket, or
// /dev/fuse as an os.File) with raw read(2): syscall.RawConn.Read calls
// it while the descriptor is readable and waits in the poller on EAGAIN,
// so deadlines and Close keep working. The function handed to
// RawConn.Read is made once, not per call; mu serializes readers.
type Reader struct {
	rc   syscall.RawConn
	skip syscall.Errno
	fn   func(fd uintptr) bool

	mu    sync.Mutex
	buf   []byte
	n     int
	errno syscall.Errno
}

// NewReader reads rc; a read failing with skip (if not 0) is retried
// like one interrupted by a signal.
func NewReader(rc syscall.RawConn, skip syscall.Errno) *Reader {
	r := &Reader{rc: rc, skip: skip}
	r.fn = r.read
	return r
}

// Read reads into len(p) > 0 bytes of p, waiting in the poller until the
// descriptor has data: n bytes (0 at end of file), or the read's errno,
// or err from the poller (closed, deadline exceeded).
func (r *Reader) Read(p []byte) (n int, errno syscall.Errno, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf, r.n, r.errno = p, 0, 0
	err = r.rc.Read(r.fn)
	r.buf = nil
	return r.n, r.errno, err
}

func (r *Reader) read(fd uintptr) bool {
	for {
		n, e := Read(fd, r.buf)
		switch {
		case e == unix.EINTR || (e != 0 && e == r.skip):
			continue
		case e == unix.EAGAIN:
			return false
		}
		r.n, r.errno = n, e
		return true
	}
}
