package replica

import (
	"errors"
	"io"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/internal/rawsys"
)

// Block-range locks: the volume is divided into regions of 16 blocks
// (64 KiB) mapped onto a fixed table of mutexes. A request locks the
// stripes of every region it touches in ascending stripe order, so
// overlapping writes (and read-modify-write of partial blocks) are
// serialized while unrelated I/O proceeds in parallel.
const (
	rlStripes     = 1024
	rlRegionShift = 4
)

type rangeLocks struct{ m [rlStripes]sync.Mutex }

type rangeGuard struct {
	l      *rangeLocks
	a0, a1 int // first stripe run [a0, a1]
	b0, b1 int // second run [b0, b1], b0 > b1 if none
}

func (l *rangeLocks) lock(blk0, blk1 int64) rangeGuard {
	r0 := blk0 >> rlRegionShift
	r1 := (blk1 - 1) >> rlRegionShift
	if r0 == r1 { // common case: one region
		s := int(r0 % rlStripes)
		l.m[s].Lock()
		return rangeGuard{l: l, a0: s, a1: s, b0: 1, b1: 0}
	}
	g := rangeGuard{l: l, b0: 1, b1: 0}
	switch {
	case r1-r0+1 >= rlStripes:
		g.a0, g.a1 = 0, rlStripes-1
	default:
		s0, s1 := int(r0%rlStripes), int(r1%rlStripes)
		if s0 <= s1 {
			g.a0, g.a1 = s0, s1
		} else { // wrapped: [0, s1] then [s0, end]
			g.a0, g.a1, g.b0, g.b1 = 0, s1, s0, rlStripes-1
		}
	}
	for i := g.a0; i <= g.a1; i++ {
		l.m[i].Lock()
	}
	for i := g.b0; i <= g.b1; i++ {
		l.m[i].Lock()
	}
	return g
}

func (g rangeGuard) unlock() {
	for i := g.b0; i <= g.b1; i++ {
		g.l.m[i].Unlock()
	}
	for i := g.a0; i <= g.a1; i++ {
		g.l.m[i].Unlock()
	}
}

// pwriteFull writes all of p at off with pwrite(2) on the raw descriptor:
// the I/O path skips os.File's descriptor reference counting.
func pwriteFull(fd int, p []byte, off int64) error { return pwriteAll(fd, p, off, unix.Pwrite) }

// pwriteAll writes all of p at off with pwrite, retrying short and
// interrupted writes.
func pwriteAll(fd int, p []byte, off int64, pwrite func(fd int, p []byte, off int64) (int, error)) error {
	for len(p) > 0 {
		n, err := pwrite(fd, p, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// pwriteRaw is pwrite(2) as a raw system call (rawsys.Pwrite).
func pwriteRaw(fd int, p []byte, off int64) (int, error) {
	n, e := rawsys.Pwrite(uintptr(fd), p, off)
	if e != 0 {
		return n, e
	}
	return n, nil
}

// cachedWriteChunk bounds one buffered pwrite of layer data. The kernel
// sizes the page-cache folio a write creates by the write's length, and a
// later small write into a large folio costs time in proportion to the
// folio, not to the write: on ext4 (large folios since Linux 6.16, with a
// buffer head per block) a 4 KiB overwrite of data written by one 1 MiB
// pwrite walks 256 buffer heads on write and again on writeback, and cost
// the replicas about half their CPU in a random-write benchmark. Writing
// in 64 KiB pieces keeps folios at 16 blocks for a few extra system calls
// per large write.
const cachedWriteChunk = 64 << 10

// pwriteCached writes p at off through the page cache in pieces of at most
// cachedWriteChunk (see there). Layers that take small overwrites (the head,
// and layers merged into a head) are written with it.
//
// The pieces are written with raw system calls, which the scheduler does
// not see (package rawsys says why that matters): a buffered write
// of 64 KiB copies into the page cache and returns in microseconds. When
// the kernel throttles the writer for dirty pages, the goroutine keeps its
// P meanwhile; the process's other Ps run everything else.
func pwriteCached(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n := min(len(p), cachedWriteChunk)
		if err := pwriteAll(fd, p[:n], off, pwriteRaw); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// preadFull reads len(p) bytes at off; the layer files are volume-sized,
// so a short read is an error.
func preadFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(fd, p, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// zeroes is a read-only buffer of zero bytes.
var zeroes = make([]byte, 1<<20)

// ReadAt reads len(p) bytes at off from the head's view of the volume.
func (r *Replica) ReadAt(p []byte, off int64) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return 0, err
	}
	if err := r.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.readLocked(p, off)
}

// errNotCached: ReadCached found data that is not in the page cache.
var errNotCached = errors.New("replica: data not in the page cache")

// ReadCached is ReadAt for data in the page cache only: it never waits for
// the disk, and returns errNotCached (with p partly filled) when some of
// the data would have to be read from it (preadv2 RWF_NOWAIT).
func (r *Replica) ReadCached(p []byte, off int64) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	if err := r.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	_, err := r.readRuns(p, off, preadCached)
	return err
}

// preadCached reads len(p) bytes at off if the page cache holds all of
// them. Any failure (EAGAIN, a file system or kernel without RWF_NOWAIT,
// an I/O error) is errNotCached: ReadAt then does the read and reports
// real errors. RWF_NOWAIT never waits, so it is a raw system call (see
// pwriteCached).
func preadCached(fd int, p []byte, off int64) error {
	n, e := rawsys.Preadv2(uintptr(fd), p, off, unix.RWF_NOWAIT)
	if e != 0 || n < len(p) {
		return errNotCached
	}
	return nil
}

// readLocked resolves each block run through the index and reads it from
// its owning layer. Callers hold mu shared.
func (r *Replica) readLocked(p []byte, off int64) (int, error) {
	return r.readRuns(p, off, preadFull)
}

// readRuns is readLocked reading each run with pread.
func (r *Replica) readRuns(p []byte, off int64, pread func(fd int, p []byte, off int64) error) (int, error) {
	done := 0
	for done < len(p) {
		cur := off + int64(done)
		owner, endBlk := r.idx.lookup(cur / BlockSize)
		n := min(int64(len(p)-done), endBlk*BlockSize-cur)
		dst := p[done : done+int(n)]
		if owner == 0 {
			clear(dst)
		} else if err := pread(r.layers[owner-1].fd, dst, cur); err != nil {
			if err == errNotCached {
				return done, err
			}
			return done, ioErr("read", err)
		}
		done += int(n)
	}
	return done, nil
}

// WriteAt writes p at off into the head. Partial blocks whose current data
// lives in a lower layer are read-modify-written under the block-range
// lock, so the head always holds whole blocks.
func (r *Replica) WriteAt(p []byte, off int64) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return 0, err
	}
	if err := r.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	return r.writeLocked(p, off)
}

func (r *Replica) writeLocked(p []byte, off int64) (int, error) {
	n := len(r.layers)
	head := r.layers[n-1]
	hp := uint16(n)
	end := off + int64(len(p))
	b0, b1 := off/BlockSize, (end+BlockSize-1)/BlockSize
	g := r.rl.lock(b0, b1)
	defer g.unlock()

	// A partial edge block needs read-modify-write unless the head owns
	// it already or nothing does (a fresh head block reads as zeroes).
	needRMW := func(b int64) bool {
		bs, be := b*BlockSize, (b+1)*BlockSize
		if off <= bs && end >= be {
			return false
		}
		o, _ := r.idx.lookup(b)
		return o != hp && (o != 0 || r.rebuilding)
	}
	buf, wOff := p, off
	if needRMW(b0) || needRMW(b1-1) {
		if r.rebuilding {
			return 0, ErrUnaligned
		}
		buf = make([]byte, (b1-b0)*BlockSize)
		wOff = b0 * BlockSize
		if _, err := r.readLocked(buf[:BlockSize], wOff); err != nil {
			return 0, err
		}
		if b1-1 > b0 {
			last := len(buf) - BlockSize
			if _, err := r.readLocked(buf[last:], wOff+int64(last)); err != nil {
				return 0, err
			}
		}
		copy(buf[off-wOff:], p)
	}
	if err := hook("write"); err != nil {
		return 0, ioErr("write", err)
	}
	if err := r.markChanged(wOff, wOff+int64(len(buf))); err != nil {
		return 0, err
	}
	simWrite(head.path, head.fd, wOff, int64(len(buf)))
	err := pwriteCached(head.fd, buf, wOff)
	r.markDirty()
	if err != nil {
		r.resyncHead(b0, b1)
		return 0, ioErr("write", err)
	}
	if !r.idx.all(b0, b1, hp) {
		r.idx.set(b0, b1, hp)
	}
	return len(p), nil
}

// Flush makes every write acknowledged before it durable (fdatasync of
// the head; snapshot and received layers are synced when frozen).
func (r *Replica) Flush() error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	if err := hook("flush"); err != nil {
		return ioErr("fdatasync", err)
	}
	return r.syncHead()
}

// markDirty records that the head has unsynced changes. It is called
// after the change, so a Flush that misses the flag was issued before the
// change was acknowledged. The load keeps the flag's cache line shared
// while it is already set.
func (r *Replica) markDirty() {
	if !r.dirty.Load() {
		r.dirty.Store(true)
	}
}

// syncHead fdatasyncs the head if it changed since the last sync: a flush
// or snapshot with nothing written costs no system call (fdatasync of a
// clean file still flushes the device cache on ext4). Callers hold mu.
//
// syncMu makes a concurrent caller that finds the flag clear wait for the
// fdatasync in progress, which covers its writes.
func (r *Replica) syncHead() error {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	if !r.dirty.Swap(false) {
		return nil
	}
	if err := fdatasync(r.layers[len(r.layers)-1]); err != nil {
		r.dirty.Store(true)
		return ioErr("fdatasync", err)
	}
	return nil
}

// Trim discards [off, off+length): whole blocks read as zeroes afterwards
// and their space is released where no lower layer holds data for them
// (punch hole). Partial blocks at the edges are left unchanged, as a
// discard is advisory for them.
func (r *Replica) Trim(off, length int64) error {
	return r.zeroRange(off, length, true)
}

// WriteZeroes makes [off, off+length) read as zeroes, punching holes where
// possible and writing zero blocks where a lower layer holds data that
// must stay hidden.
func (r *Replica) WriteZeroes(off, length int64) error {
	return r.zeroRange(off, length, false)
}

func (r *Replica) zeroRange(off, length int64, trim bool) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	if err := r.checkRange(off, length); err != nil {
		return err
	}
	end := off + length
	b0, b1 := (off+BlockSize-1)/BlockSize, end/BlockSize
	if b0 >= b1 { // no whole block
		if trim || length == 0 {
			return nil
		}
		return r.writeZeroBytes(off, end)
	}
	if !trim {
		if err := r.writeZeroBytes(off, b0*BlockSize); err != nil {
			return err
		}
		if err := r.writeZeroBytes(b1*BlockSize, end); err != nil {
			return err
		}
	}
	return r.zeroBlocks(b0, b1)
}

func (r *Replica) writeZeroBytes(off, end int64) error {
	for off < end {
		n := min(end-off, int64(len(zeroes)))
		if _, err := r.writeLocked(zeroes[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// zeroBlocks zeroes whole blocks [b0, b1) in the head.
func (r *Replica) zeroBlocks(b0, b1 int64) error {
	n := len(r.layers)
	head := r.layers[n-1]
	hp := uint16(n)
	g := r.rl.lock(b0, b1)
	defer g.unlock()
	if err := r.markChanged(b0*BlockSize, b1*BlockSize); err != nil {
		return err
	}
	defer r.markDirty() // punched holes and zero blocks alike
	off, end := b0*BlockSize, b1*BlockSize
	// Blocks a lower layer holds data for must be covered by zero data in
	// the head; elsewhere a hole reads as zeroes. While layers are being
	// received, lower data is not known yet: write zeroes everywhere.
	var lower []Extent
	if r.rebuilding {
		lower = []Extent{{Offset: off, Length: end - off}}
	} else {
		for _, l := range r.layers[:n-1] {
			ext, err := dataExtents(l.fd, off, end)
			if err != nil {
				return ioErr("seek data", err)
			}
			lower = mergeExtents(append(lower, ext...))
		}
	}
	cur := off
	punch := func(to int64) error {
		if to <= cur {
			return nil
		}
		simWrite(head.path, head.fd, cur, to-cur)
		if err := unix.Fallocate(head.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, cur, to-cur); err != nil {
			return ioErr("punch hole", err)
		}
		r.idx.set(cur/BlockSize, to/BlockSize, 0)
		return nil
	}
	for _, e := range lower {
		if err := punch(e.Offset); err != nil {
			return err
		}
		for o := e.Offset; o < e.End(); {
			k := min(e.End()-o, int64(len(zeroes)))
			simWrite(head.path, head.fd, o, k)
			if err := pwriteCached(head.fd, zeroes[:k], o); err != nil {
				r.resyncHead(e.Offset/BlockSize, (o+k+BlockSize-1)/BlockSize)
				return ioErr("write zeroes", err)
			}
			o += k
		}
		r.idx.set(e.Offset/BlockSize, e.End()/BlockSize, hp)
		cur = e.End()
	}
	return punch(end)
}

// mergeExtents sorts and merges overlapping or adjacent extents.
func mergeExtents(ext []Extent) []Extent {
	if len(ext) < 2 {
		return ext
	}
	sortExtents(ext)
	w := 0
	for _, e := range ext[1:] {
		if e.Offset <= ext[w].End() {
			ext[w].Length = max(ext[w].End(), e.End()) - ext[w].Offset
			continue
		}
		w++
		ext[w] = e
	}
	return ext[:w+1]
}

// resyncHead re-derives index ownership of [b0, b1) for the head from the
// head file after a failed (possibly partial) write: blocks the head file
// now holds belong to the head. Callers hold the range lock.
func (r *Replica) resyncHead(b0, b1 int64) {
	n := len(r.layers)
	ext, err := dataExtents(r.layers[n-1].fd, b0*BlockSize, b1*BlockSize)
	if err != nil {
		return
	}
	for _, e := range ext {
		r.idx.set(e.Offset/BlockSize, e.End()/BlockSize, uint16(n))
	}
}
