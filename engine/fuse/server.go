package fuse

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/internal/rawsys"
)

// The FUSE protocol server of the volume file system (the wire structs are
// go-fuse's; the serving loop is this file's). One reader reads /dev/fuse
// non-blocking until it is empty and only then waits, in the Go poller
// like a socket, so a burst of requests costs no thread wake-up per
// request; READ, WRITE and FSYNC are handed to the backend without waiting
// (engine.AsyncBackend) and their replies are written from the
// completion. Everything else is answered on the reader. Reads and
// replies are raw system calls (package rawsys): with every wait in the
// poller, the process makes no system call the scheduler sees while it
// serves I/O (a wait in poll(2) kept the runtime's monitor thread polling
// and cost the engine 14% of its CPU in 4k random reads).
//
// Waiting in the process's epoll instance is why the process must never
// open its own volume file through os.OpenFile (doc.go): registering that
// file with the same epoll instance asks this server (FUSE_POLL) while
// holding the instance's lock, which the waiting server needs to wake.

// FUSE opcodes (linux/fuse.h).
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opSetattr     = 4
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opFlush       = 25
	opInit        = 26
	opOpendir     = 27
	opReaddir     = 28
	opReleasedir  = 29
	opFsyncdir    = 30
	opAccess      = 34
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42
	opFallocate   = 43

	notifyInvalInode = 2 // FUSE_NOTIFY_INVAL_INODE
)

// Protocol parameters negotiated at INIT.
const (
	protoMinor    = 38
	maxWrite      = 1 << 20
	maxBackground = 128
	rootIno       = 1
	fileIno       = 2
	inHeaderSize  = int(unsafe.Sizeof(fuse.InHeader{}))
	outHeaderSize = int(unsafe.Sizeof(fuse.OutHeader{}))
	// readBufSize holds the largest request: a WRITE of maxWrite.
	readBufSize = maxWrite + 4096
	// copyWriteMax: a WRITE payload up to this size is copied out of the
	// read buffer; a larger one keeps the buffer, and the reader takes
	// another.
	copyWriteMax = 64 << 10
)

// initFlags are the capabilities asked for: async direct I/O (a loop
// device's requests in flight together), writes over 4 KiB, 1 MiB requests.
const initFlags = fuse.CAP_ASYNC_READ | fuse.CAP_BIG_WRITES | fuse.CAP_ASYNC_DIO | fuse.CAP_MAX_PAGES

// server serves one mount's /dev/fuse connection.
type server struct {
	fd int
	// dev holds fd in the Go poller; r waits there for requests.
	dev *os.File
	r   *rawsys.Reader

	file *volumeFile
	name string
	done chan struct{}
	// inflight counts the requests the backend has; the descriptor is
	// closed only after their replies.
	inflight sync.WaitGroup
	// bigBufs are read buffers; smallBufs hold copied WRITE payloads and
	// READ results up to copyWriteMax.
	bigBufs, smallBufs sync.Pool
}

// newServer serves the non-blocking /dev/fuse descriptor fd, which it
// owns from now on (close releases it).
func newServer(fd int, file *volumeFile, name string) (*server, error) {
	s := &server{fd: fd, file: file, name: name, done: make(chan struct{})}
	s.dev = os.NewFile(uintptr(fd), "/dev/fuse")
	rc, err := s.dev.SyscallConn()
	if err != nil {
		s.dev.Close()
		return nil, fmt.Errorf("fuse: /dev/fuse: %w", err)
	}
	// ENOENT: a request interrupted before it was read; skip it.
	s.r = rawsys.NewReader(rc, unix.ENOENT)
	s.bigBufs.New = func() any { return make([]byte, readBufSize) }
	s.smallBufs.New = func() any { return make([]byte, copyWriteMax) }
	return s, nil
}

// close closes the descriptor.
func (s *server) close() { s.dev.Close() }

// read reads one request into buf, waiting in the poller while there is
// none.
func (s *server) read(buf []byte) (int, error) {
	n, errno, err := s.r.Read(buf)
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, errno
	}
	return n, nil
}

// reply writes a reply: header, then parts.
func (s *server) reply(unique uint64, errno syscall.Errno, parts ...[]byte) {
	var hdr fuse.OutHeader
	hdr.Unique, hdr.Status = unique, -int32(errno)
	hdr.Length = uint32(outHeaderSize)
	if errno == 0 {
		for _, p := range parts {
			hdr.Length += uint32(len(p))
		}
	} else {
		parts = nil
	}
	var vs [4]unix.Iovec
	iov := append(vs[:0], unix.Iovec{Base: (*byte)(unsafe.Pointer(&hdr))})
	iov[0].SetLen(outHeaderSize)
	iov = rawsys.Iovecs(iov, parts, 0)
	// A reply is taken whole or not at all, and writing it never waits
	// (rawsys). ENOENT: the request was interrupted and is gone.
	_, _ = rawsys.Writev(uintptr(s.fd), iov)
}

// notify writes an unsolicited message: unique 0, the notify code in the
// error field.
func (s *server) notify(code int32, body []byte) error {
	hdr := fuse.OutHeader{Length: uint32(outHeaderSize + len(body)), Status: code}
	select {
	case <-s.done:
		return unix.ENODEV
	default:
	}
	iov := [][]byte{unsafe.Slice((*byte)(unsafe.Pointer(&hdr)), outHeaderSize), body}
	_, err := unix.Writev(s.fd, iov)
	return err
}

// handshake answers the kernel's INIT, the first request after mount.
func (s *server) handshake() error {
	buf := s.bigBufs.Get().([]byte)
	defer s.bigBufs.Put(buf)
	n, err := s.read(buf)
	if err != nil {
		return fmt.Errorf("fuse: read INIT: %w", err)
	}
	in, ok := asStruct[fuse.InitIn](buf[:n])
	if !ok || in.Opcode != opInit {
		return errors.New("fuse: first request is not INIT")
	}
	if in.Major != 7 || in.Minor < 31 {
		s.reply(in.Unique, syscall.EPROTO)
		return fmt.Errorf("fuse: kernel protocol %d.%d is too old (need 7.31)", in.Major, in.Minor)
	}
	out := fuse.InitOut{
		Major: 7, Minor: min(in.Minor, protoMinor), MaxReadAhead: in.MaxReadAhead,
		Flags:         in.Flags & initFlags,
		MaxBackground: maxBackground, CongestionThreshold: maxBackground * 3 / 4,
		MaxWrite: maxWrite, TimeGran: 1, MaxPages: maxWrite / 4096,
	}
	s.reply(in.Unique, 0, bytesOf(&out))
	return nil
}

// serve reads and dispatches requests until the file system is unmounted.
func (s *server) serve() {
	defer close(s.done)
	defer func() {
		s.inflight.Wait()
		s.close()
	}()
	buf := s.bigBufs.Get().([]byte)
	for {
		n, err := s.read(buf)
		if err != nil {
			return // ENODEV: unmounted
		}
		if s.dispatch(buf[:n]) {
			buf = s.bigBufs.Get().([]byte)
		}
	}
}

// dispatch handles one request; kept reports that a WRITE kept buf.
func (s *server) dispatch(req []byte) (kept bool) {
	h, ok := asStruct[fuse.InHeader](req)
	if !ok {
		return false
	}
	switch h.Opcode {
	case opForget, opBatchForget, opInterrupt:
		// No reply. Interrupted requests finish anyway: a write must not
		// stop half-way across the replicas.
	case opRead:
		s.readData(req)
	case opWrite:
		return s.writeData(req)
	case opFsync:
		s.submit(h.Unique, engine.IOFlush, nil, 0, nil, false)
	case opFallocate:
		in, ok := asStruct[fuse.FallocateIn](req)
		if !ok {
			s.reply(h.Unique, syscall.EINVAL)
			break
		}
		s.inflight.Add(1)
		go func(in fuse.FallocateIn) {
			defer s.inflight.Done()
			s.reply(in.Unique, s.file.allocate(in.Offset, in.Length, in.Mode))
		}(*in)
	default:
		s.metadata(h, req)
	}
	return false
}

// metadata answers the requests about the tree: a root directory holding
// the volume file.
func (s *server) metadata(h *fuse.InHeader, req []byte) {
	switch h.Opcode {
	case opLookup:
		s.lookup(h, req[inHeaderSize:])
	case opGetattr:
		s.attr(h.Unique, h.NodeId)
	case opSetattr:
		in, ok := asStruct[fuse.SetAttrIn](req)
		switch {
		case !ok:
			s.reply(h.Unique, syscall.EINVAL)
		case in.Valid&fuse.FATTR_SIZE != 0 && int64(in.Size) != s.file.b.Size():
			s.reply(h.Unique, syscall.EPERM)
		default:
			s.attr(h.Unique, h.NodeId)
		}
	case opOpen:
		s.open(h, req)
	case opRelease:
		s.file.opens.Add(-1)
		s.reply(h.Unique, 0)
	case opOpendir:
		s.reply(h.Unique, 0, bytesOf(&fuse.OpenOut{}))
	case opReaddir:
		s.readdir(h, req)
	case opStatfs:
		s.reply(h.Unique, 0, bytesOf(&fuse.StatfsOut{Bsize: 4096, Frsize: 4096, NameLen: 255}))
	case opFlush, opReleasedir, opFsyncdir, opAccess, opDestroy:
		s.reply(h.Unique, 0)
	default:
		s.reply(h.Unique, syscall.ENOSYS)
	}
}

func (s *server) lookup(h *fuse.InHeader, name []byte) {
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	if h.NodeId != rootIno || string(name) != s.name {
		s.reply(h.Unique, syscall.ENOENT)
		return
	}
	out := fuse.EntryOut{NodeId: fileIno, Generation: 1}
	out.SetEntryTimeout(attrTimeout)
	out.SetAttrTimeout(attrTimeout)
	s.file.fill(&out.Attr)
	s.reply(h.Unique, 0, bytesOf(&out))
}

func (s *server) attr(unique, ino uint64) {
	var out fuse.AttrOut
	out.SetTimeout(attrTimeout)
	switch ino {
	case rootIno:
		out.Ino, out.Mode, out.Nlink = rootIno, syscall.S_IFDIR|0o755, 2
		out.SetTimes(nil, &s.file.mtime, &s.file.mtime)
	case fileIno:
		s.file.fill(&out.Attr)
	default:
		s.reply(unique, syscall.ENOENT)
		return
	}
	s.reply(unique, 0, bytesOf(&out))
}

func (s *server) open(h *fuse.InHeader, req []byte) {
	in, ok := asStruct[fuse.OpenIn](req)
	switch {
	case !ok:
		s.reply(h.Unique, syscall.EINVAL)
	case h.NodeId != fileIno:
		s.reply(h.Unique, syscall.EISDIR)
	case in.Flags&syscall.O_TRUNC != 0:
		s.reply(h.Unique, syscall.EPERM)
	default:
		s.file.opens.Add(1)
		// Writes to different ranges need not wait for each other: the
		// backend orders overlapping ones.
		s.reply(h.Unique, 0, bytesOf(&fuse.OpenOut{Fh: 1, OpenFlags: fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES}))
	}
}

// readdir lists ".", ".." and the volume file, from the offset asked for.
func (s *server) readdir(h *fuse.InHeader, req []byte) {
	in, ok := asStruct[fuse.ReadIn](req)
	if !ok {
		s.reply(h.Unique, syscall.EINVAL)
		return
	}
	entries := []struct {
		ino  uint64
		typ  uint32
		name string
	}{{rootIno, syscall.DT_DIR, "."}, {rootIno, syscall.DT_DIR, ".."}, {fileIno, syscall.DT_REG, s.name}}
	var out []byte
	for i := int(in.Offset); i < len(entries); i++ {
		e := entries[i]
		rec := (24 + len(e.name) + 7) &^ 7
		if len(out)+rec > int(in.Size) {
			break
		}
		b := make([]byte, rec)
		binary.NativeEndian.PutUint64(b[0:], e.ino)
		binary.NativeEndian.PutUint64(b[8:], uint64(i+1))
		binary.NativeEndian.PutUint32(b[16:], uint32(len(e.name)))
		binary.NativeEndian.PutUint32(b[20:], e.typ)
		copy(b[24:], e.name)
		out = append(out, b...)
	}
	s.reply(h.Unique, 0, out)
}

// ioReq is a READ, WRITE or FSYNC in flight in the backend.
type ioReq struct {
	s      *server
	rq     engine.Request
	unique uint64
	// buf is a pooled buffer to give back: small (smallBufs) or a read
	// buffer (bigBufs) kept by a large WRITE.
	buf   []byte
	big   bool
	wrote fuse.WriteOut
}

var ioReqPool sync.Pool

func init() {
	ioReqPool.New = func() any {
		r := &ioReq{}
		r.rq.Tag = r
		r.rq.Done = func(rq *engine.Request, err error) { rq.Tag.(*ioReq).finish(err) }
		return r
	}
}

func (s *server) readData(req []byte) {
	in, ok := asStruct[fuse.ReadIn](req)
	if !ok {
		s.reply(binaryUnique(req), syscall.EINVAL)
		return
	}
	size, off := int64(in.Size), int64(in.Offset)
	if rem := s.file.b.Size() - off; rem < size {
		size = max(rem, 0)
	}
	if size == 0 {
		s.reply(in.Unique, 0)
		return
	}
	var buf []byte
	big := size > copyWriteMax
	if big {
		buf = s.bigBufs.Get().([]byte)
	} else {
		buf = s.smallBufs.Get().([]byte)
	}
	s.submit(in.Unique, engine.IORead, buf[:size], off, buf, big)
}

// writeData submits a WRITE; kept reports that the request buffer went
// with it.
func (s *server) writeData(req []byte) (kept bool) {
	in, ok := asStruct[fuse.WriteIn](req)
	hdr := int(unsafe.Sizeof(fuse.WriteIn{}))
	if !ok || len(req) < hdr+int(in.Size) {
		s.reply(binaryUnique(req), syscall.EINVAL)
		return false
	}
	off, data := int64(in.Offset), req[hdr:hdr+int(in.Size)]
	if off >= s.file.b.Size() {
		s.reply(in.Unique, syscall.ENOSPC)
		return false
	}
	if rem := s.file.b.Size() - off; int64(len(data)) > rem {
		data = data[:rem]
	}
	if len(data) > copyWriteMax {
		s.submit(in.Unique, engine.IOWrite, data, off, req[:cap(req)], true)
		return true
	}
	buf := s.smallBufs.Get().([]byte)
	n := copy(buf, data)
	s.submit(in.Unique, engine.IOWrite, buf[:n], off, buf, false)
	return false
}

// submit hands a request to the backend; pooled (a read buffer when big)
// goes back to its pool once the reply is written.
func (s *server) submit(unique uint64, op engine.IOOp, buf []byte, off int64, pooled []byte, big bool) {
	r := ioReqPool.Get().(*ioReq)
	r.s, r.unique, r.buf, r.big = s, unique, pooled, big
	r.rq.Op, r.rq.Buf, r.rq.Off = op, buf, off
	s.inflight.Add(1)
	s.file.submit(&r.rq)
}

// finish replies to a completed READ, WRITE or FSYNC and recycles it.
func (r *ioReq) finish(err error) {
	s := r.s
	switch {
	case err != nil:
		s.reply(r.unique, errno(err))
	case r.rq.Op == engine.IORead:
		s.reply(r.unique, 0, r.rq.Buf)
	case r.rq.Op == engine.IOWrite:
		r.wrote.Size = uint32(len(r.rq.Buf))
		s.reply(r.unique, 0, bytesOf(&r.wrote))
	default:
		s.reply(r.unique, 0)
	}
	switch {
	case r.buf == nil:
	case r.big:
		s.bigBufs.Put(r.buf[:readBufSize])
	default:
		s.smallBufs.Put(r.buf[:copyWriteMax])
	}
	r.s, r.buf, r.rq.Buf = nil, nil, nil
	ioReqPool.Put(r)
	s.inflight.Done()
}

// asStruct views the start of b as a T when b is long enough. T is one of
// go-fuse's request structs, which begin with the InHeader.
func asStruct[T any](b []byte) (*T, bool) {
	var zero T
	if len(b) < int(unsafe.Sizeof(zero)) {
		return nil, false
	}
	return (*T)(unsafe.Pointer(&b[0])), true
}

// bytesOf is the memory of *v, for a reply.
func bytesOf[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

func binaryUnique(req []byte) uint64 {
	if h, ok := asStruct[fuse.InHeader](req); ok {
		return h.Unique
	}
	return 0
}
