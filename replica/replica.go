package replica

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Replica is one copy of a volume stored in a directory: a chain of layers
// (oldest snapshot ... newest snapshot, head) plus replica.meta. All
// methods are safe for concurrent use. I/O methods (ReadAt, WriteAt, Flush,
// Trim, WriteZeroes) run in parallel; writes to overlapping blocks are
// serialized by striped block-range locks. Control operations (snapshot,
// revert, remove, rebuild) are serialized with each other and briefly
// exclude I/O only while the chain is switched.
type Replica struct {
	dir    string
	size   int64
	blocks int64
	lockf  *os.File

	// opMu serializes control operations. Holding it keeps r.layers stable.
	opMu sync.Mutex
	// mu is the chain lock: I/O holds it shared, chain switches exclusive.
	mu         sync.RWMutex
	meta       *metaFile
	layers     []*layer       // chain position i+1 is layers[i]; last is head
	names      map[string]int // snapshot name -> chain position (1-based)
	rebuilding bool
	idx        *index
	ms         *metaStore
	// trackers are the changed-block bitmaps (cbt.go), replaced under mu
	// (and opMu); cbt is the file they persist in
	trackers []*changeTracker
	cbt      *cbtFile
	// sessionGen is Info().SessionStart: the generation whose tracker
	// covers the engine session (0: none). Under mu.
	sessionGen uint64
	// mergeTrk notes head changes during a merge's online copy
	// (mergeHeadDown), set under mu
	mergeTrk *changeTracker
	rl       rangeLocks
	closed   bool
	// broken is set when a chain change failed half-way in a way only a
	// reopen can resolve (see mergeHeadDown); every operation then fails.
	broken error

	// pins counts open readers (snapshot readers, checksums) per layer id
	// whose content must not change under them. Guarded by pinMu.
	pinMu sync.Mutex
	pins  map[string]int

	// dirty is set when the head has changes not yet fdatasynced.
	dirty  atomic.Bool
	syncMu sync.Mutex
	// spares holds a pre-created empty layer file for the next snapshot's
	// head, made in the background (spareRun) so a snapshot does not
	// create a file on its critical path.
	spares   chan *layer
	spareRun sync.WaitGroup
	spareBsy atomic.Bool
}

type layer struct {
	rec  layerRecord
	f    *os.File
	fd   int
	path string
	// gen counts content changes of a frozen layer (coalesce into it), so
	// a checksum computed concurrently is not stored for changed content.
	gen uint64
}

// testHook, when set by tests, is called at named fault points; a non-nil
// error is returned from the operation as if the system call had failed.
var testHook func(point string) error

func hook(point string) error {
	if testHook != nil {
		return testHook(point)
	}
	return nil
}

// ioErr wraps a system error, mapping ENOSPC to ErrNoSpace.
func ioErr(op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%s: %w: %w", op, ErrNoSpace, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Create makes a new empty replica of size bytes (a multiple of BlockSize)
// in dir, creating dir if needed. It fails with ErrExists if dir already
// holds a replica.
func Create(dir string, size int64) (*Replica, error) {
	if size <= 0 || size%BlockSize != 0 || size > maxSize {
		return nil, fmt.Errorf("%w: size %d must be a positive multiple of %d up to %d", ErrInvalid, size, BlockSize, int64(maxSize))
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	lockf, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			lockf.Close()
		}
	}()
	if _, err := os.Stat(filepath.Join(dir, metaName)); err == nil {
		return nil, fmt.Errorf("%w: %s already holds a replica", ErrExists, dir)
	}
	if err := checkFS(dir); err != nil {
		return nil, err
	}
	head, err := newLayerFile(dir, size)
	if err != nil {
		return nil, err
	}
	m := &metaFile{Size: size, BlockSize: BlockSize, Layers: []layerRecord{{ID: head}}}
	ms, err := createMeta(filepath.Join(dir, metaName), m)
	if err != nil {
		os.Remove(filepath.Join(dir, layerRecord{ID: head}.fileName()))
		return nil, ioErr("write metadata", err)
	}
	ms.close()
	r, err := openLocked(dir, lockf)
	ok = err == nil
	return r, err
}

// Open opens the replica in dir. Truncated or corrupt metadata, or a
// missing layer file, make it fail with ErrCorrupt and a message naming the
// file; it never serves data it cannot vouch for. A directory can be open
// in one process at a time (flock).
func Open(dir string) (*Replica, error) {
	lockf, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	r, err := openLocked(dir, lockf)
	if err != nil {
		lockf.Close()
	}
	return r, err
}

// OpenOrCreate opens the replica in dir, or creates one of size bytes if
// dir holds none. An existing replica larger than size is opened as it is
// (an engine grew the volume since); a smaller one is grown to size (the
// volume grew while it was away).
func OpenOrCreate(dir string, size int64) (*Replica, error) {
	if _, err := os.Stat(filepath.Join(dir, metaName)); errors.Is(err, fs.ErrNotExist) {
		return Create(dir, size)
	}
	r, err := Open(dir)
	if err != nil {
		return nil, err
	}
	if r.Size() < size {
		if err := r.Grow(size); err != nil {
			r.Close()
			return nil, fmt.Errorf("grow %s from %d to %d bytes: %w", dir, r.Size(), size, err)
		}
	}
	return r, nil
}

func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("replica: %s is in use by another process: %w", dir, err)
	}
	return f, nil
}

// checkFS refuses filesystems whose block size exceeds BlockSize: hole
// detection (SEEK_DATA) would then report blocks a layer never wrote.
func checkFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	if st.Bsize > BlockSize {
		return fmt.Errorf("%w: filesystem block size %d of %s exceeds %d", ErrInvalid, st.Bsize, dir, BlockSize)
	}
	return nil
}

func newID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// newLayerFile creates an empty sparse layer file of size bytes and
// returns its id. The directory entry becomes durable with the next
// metadata write (which fsyncs the directory).
func newLayerFile(dir string, size int64) (string, error) {
	id := newID()
	path := filepath.Join(dir, layerRecord{ID: id}.fileName())
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return "", err
	}
	simCreated(path)
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		os.Remove(path)
		return "", ioErr("truncate layer", err)
	}
	return id, nil
}

// newDurableLayerFile is newLayerFile with the directory entry made
// durable: metadata slot commits do not fsync the directory, so a file a
// commit will list must be durable in it first (the spare head files are
// made so in the background, off the snapshot's path).
func newDurableLayerFile(dir string, size int64) (string, error) {
	id, err := newLayerFile(dir, size)
	if err != nil {
		return "", err
	}
	if err := syncDir(dir); err != nil {
		os.Remove(filepath.Join(dir, layerRecord{ID: id}.fileName()))
		return "", err
	}
	return id, nil
}

func openLocked(dir string, lockf *os.File) (*Replica, error) {
	mpath := filepath.Join(dir, metaName)
	m, ms, degraded, err := loadMeta(mpath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s: no replica metadata", ErrNotFound, mpath)
		}
		return nil, err
	}
	if err := checkFS(dir); err != nil {
		ms.close()
		return nil, err
	}
	r := &Replica{dir: dir, size: m.Size, blocks: m.Size / BlockSize, lockf: lockf, ms: ms}
	layers := make([]*layer, 0, len(m.Layers))
	closeAll := func() {
		for _, l := range layers {
			l.f.Close()
		}
		ms.close()
	}
	for _, rec := range m.Layers {
		l, err := openLayer(dir, rec, m.Size)
		if err != nil {
			closeAll()
			return nil, err
		}
		layers = append(layers, l)
	}
	if m.MergeFrom != "" {
		into := layers[len(layers)-1]
		for i, rec := range m.Layers {
			if rec.ID == m.MergeInto {
				into = layers[i]
			}
		}
		if m, err = finishMerge(dir, ms, m, into); err != nil {
			closeAll()
			return nil, err
		}
	}
	idx, err := buildIndex(layers, m.Size)
	if err != nil {
		closeAll()
		return nil, err
	}
	r.idx = idx
	r.setChain(m, layers)
	if r.cbt, r.trackers, r.sessionGen, err = openTrackers(dir, m.Size, m.Generation); err != nil {
		closeAll()
		return nil, ioErr("open change trackers", err)
	}
	// with one metadata copy unreadable the other may be one commit old:
	// keep files it does not know until a clean open
	if !degraded {
		removeOrphans(dir, m)
	}
	r.spares = make(chan *layer, 1)
	r.refillSpare()
	return r, nil
}

func openLayer(dir string, rec layerRecord, size int64) (*layer, error) {
	path := filepath.Join(dir, rec.fileName())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: layer file %s listed in %s is missing", ErrCorrupt, path, metaName)
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	switch {
	case st.Size() > size:
		f.Close()
		return nil, fmt.Errorf("%w: layer file %s is %d bytes, volume is %d", ErrCorrupt, path, st.Size(), size)
	case st.Size() < size:
		// created but its size not yet durable when the machine crashed
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, ioErr("truncate layer", err)
		}
	}
	return &layer{rec: rec, f: f, fd: int(f.Fd()), path: path}, nil
}

// refillSpare starts creating the next snapshot's head file in the
// background unless one is ready or being made. The file is not in the
// metadata: a crash leaves an orphan that Open deletes. Callers hold opMu
// (or own r).
func (r *Replica) refillSpare() {
	if len(r.spares) > 0 || !r.spareBsy.CompareAndSwap(false, true) {
		return
	}
	r.spareRun.Add(1)
	go func() {
		defer r.spareRun.Done()
		defer r.spareBsy.Store(false)
		id, err := newDurableLayerFile(r.dir, r.size)
		if err != nil {
			return // the snapshot creates its file itself
		}
		l, err := openLayer(r.dir, layerRecord{ID: id}, r.size)
		if err != nil {
			os.Remove(filepath.Join(r.dir, layerRecord{ID: id}.fileName()))
			return
		}
		r.spares <- l
	}()
}

// takeSpare returns the pre-created head file, or creates one now.
// Callers hold opMu.
func (r *Replica) takeSpare() (*layer, error) {
	select {
	case l := <-r.spares:
		return l, nil
	default:
	}
	id, err := newDurableLayerFile(r.dir, r.size)
	if err != nil {
		return nil, ioErr("create layer", err)
	}
	l, err := openLayer(r.dir, layerRecord{ID: id}, r.size)
	if err != nil {
		os.Remove(filepath.Join(r.dir, layerRecord{ID: id}.fileName()))
		return nil, err
	}
	return l, nil
}

// finishMerge completes a merge-down interrupted by a crash: it copies
// the allocated blocks of the merged layer m.MergeFrom into the layer that
// took its place, head (again: the copy is idempotent), syncs it, commits
// the metadata without MergeFrom and deletes the merged layer's file.
func finishMerge(dir string, ms *metaStore, m *metaFile, head *layer) (*metaFile, error) {
	path := filepath.Join(dir, layerRecord{ID: m.MergeFrom}.fileName())
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: layer file %s being merged (%s) is missing", ErrCorrupt, path, metaName)
		}
		return nil, err
	}
	defer f.Close()
	if err := copyAllocated(f, head.f, m.Size); err != nil {
		return nil, fmt.Errorf("finish merge of %s: %w", path, err)
	}
	if err := fdatasync(head); err != nil {
		return nil, ioErr("fdatasync", err)
	}
	m = m.clone()
	m.MergeFrom, m.MergeInto = "", ""
	if err := ms.commit(m); err != nil {
		return nil, ioErr("write metadata", err)
	}
	os.Remove(path)
	return m, nil
}

// copyAllocated copies every allocated block of src into dst at the same
// offset.
func copyAllocated(src, dst *os.File, size int64) error {
	ext, err := dataExtents(int(src.Fd()), 0, size)
	if err != nil {
		return ioErr("seek data", err)
	}
	buf := make([]byte, 1<<20)
	for _, e := range ext {
		for off := e.Offset; off < e.End(); {
			n := min(e.End()-off, int64(len(buf)))
			if _, err := src.ReadAt(buf[:n], off); err != nil {
				return ioErr("read", err)
			}
			if err := hook("merge"); err != nil {
				return ioErr("write", err)
			}
			simWrite(dst.Name(), int(dst.Fd()), off, n)
			if _, err := dst.WriteAt(buf[:n], off); err != nil {
				return ioErr("write", err)
			}
			off += n
		}
	}
	return nil
}

// pin marks layer id as being read by a reader that must keep seeing its
// content; unpin releases it.
func (r *Replica) pin(id string) {
	r.pinMu.Lock()
	if r.pins == nil {
		r.pins = map[string]int{}
	}
	r.pins[id]++
	r.pinMu.Unlock()
}

func (r *Replica) unpin(id string) {
	r.pinMu.Lock()
	if r.pins[id]--; r.pins[id] <= 0 {
		delete(r.pins, id)
	}
	r.pinMu.Unlock()
}

func (r *Replica) pinned(id string) bool {
	r.pinMu.Lock()
	defer r.pinMu.Unlock()
	return r.pins[id] > 0
}

// removeOrphans deletes layer files and temp files not referenced by the
// metadata (left by a crash between creating a file and committing it).
func removeOrphans(dir string, m *metaFile) {
	keep := map[string]bool{}
	for _, l := range m.Layers {
		keep[l.fileName()] = true
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		if (strings.HasPrefix(n, "layer-") && strings.HasSuffix(n, ".img") && !keep[n]) ||
			strings.HasPrefix(n, "."+metaName+".tmp-") {
			os.Remove(filepath.Join(dir, n))
		}
	}
}

// buildIndex scans the layers' allocated extents bottom-up.
func buildIndex(layers []*layer, size int64) (*index, error) {
	idx := newIndex(size / BlockSize)
	for i, l := range layers {
		ext, err := dataExtents(l.fd, 0, size)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", l.path, err)
		}
		for _, e := range ext {
			idx.set(e.Offset/BlockSize, e.End()/BlockSize, uint16(i+1))
		}
	}
	return idx, nil
}

// setChain installs metadata and layers; callers hold mu exclusively (or
// own r exclusively).
func (r *Replica) setChain(m *metaFile, layers []*layer) {
	r.meta = m
	r.layers = layers
	r.names = make(map[string]int, len(layers))
	r.rebuilding = false
	for i, l := range layers {
		l.rec = m.Layers[i]
		if l.rec.Name != "" {
			r.names[l.rec.Name] = i + 1
		}
		if l.rec.Incomplete {
			r.rebuilding = true
		}
	}
}

// writeMeta durably commits m as the replica's metadata. Callers hold
// opMu.
func (r *Replica) writeMeta(m *metaFile) error {
	if err := hook("meta"); err != nil {
		return ioErr("write metadata", err)
	}
	if err := r.ms.commit(m); err != nil {
		return ioErr("write metadata", err)
	}
	return nil
}

// dataExtents returns the block-aligned allocated extents of fd in
// [off, end) using SEEK_DATA/SEEK_HOLE.
func dataExtents(fd int, off, end int64) ([]Extent, error) {
	var out []Extent
	for off < end {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break
			}
			return nil, err
		}
		if d >= end {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		h = min(h, end)
		s := d &^ (BlockSize - 1)
		e := min((h+BlockSize-1)&^(BlockSize-1), end)
		if n := len(out); n > 0 && out[n-1].End() >= s {
			out[n-1].Length = max(out[n-1].End(), e) - out[n-1].Offset
		} else {
			out = append(out, Extent{Offset: s, Length: e - s})
		}
		off = h
	}
	return out, nil
}

// Size returns the volume size in bytes.
func (r *Replica) Size() int64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.size
}

// Dir returns the replica's data directory.
func (r *Replica) Dir() string { return r.dir }

// Generation returns the durable generation number.
func (r *Replica) Generation() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.meta.Generation
}

// SetGeneration durably stores g. The generation never goes backwards:
// a lower value fails with ErrStaleGeneration; the same value is a no-op.
func (r *Replica) SetGeneration(g uint64) error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	cur := r.meta.Generation
	if g < cur {
		return fmt.Errorf("%w: stored %d, requested %d", ErrStaleGeneration, cur, g)
	}
	if g == cur {
		return nil
	}
	m := r.meta.clone()
	m.Generation = g
	// track the head's changes from generation g on: the tracker is in
	// the file before the generation is stored (a file listing a tracker
	// newer than the stored generation drops it at open)
	t := newChangeTracker(g, r.size)
	session := r.sessionGen
	if cur%2 == 0 && g%2 == 1 {
		// an engine opened the volume after a clean close: this tracker
		// covers its whole session, through any unclean reopen
		session = g
	}
	trackers := dropOldTrackers(append(slices.Clone(r.trackers), t), session)
	t.cf, t.slot = r.cbt, freeSlot(r.trackers)
	if err := r.cbt.resetSlot(t.slot); err != nil {
		return err
	}
	if err := r.cbt.commit(trackers, session, cbtBootID(), true); err != nil {
		return err
	}
	if err := r.writeMeta(m); err != nil {
		return err
	}
	r.mu.Lock()
	r.meta = m
	r.trackers, r.sessionGen = trackers, session
	r.mu.Unlock()
	return nil
}

// Info returns size, generation and the snapshot chain.
func (r *Replica) Info() Info {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.infoLocked()
}

func (r *Replica) infoLocked() Info {
	in := Info{Size: r.size, BlockSize: BlockSize, Generation: r.meta.Generation, Rebuilding: r.rebuilding, SessionStart: r.sessionGen}
	in.Snapshots = make([]SnapshotInfo, 0, len(r.meta.Layers)-1)
	for _, l := range r.meta.Layers[:len(r.meta.Layers)-1] {
		s := cloneInfo(l.SnapshotInfo)
		s.Size = r.snapshotSize(l)
		in.Snapshots = append(in.Snapshots, s)
	}
	return in
}

func cloneInfo(s SnapshotInfo) SnapshotInfo {
	if s.Labels != nil {
		l := make(map[string]string, len(s.Labels))
		for k, v := range s.Labels {
			l[k] = v
		}
		s.Labels = l
	}
	return s
}

// Snapshots lists the snapshots oldest first.
func (r *Replica) Snapshots() []SnapshotInfo { return r.Info().Snapshots }

// IndexMemory returns the bytes held by the in-memory layer index.
func (r *Replica) IndexMemory() int64 { return r.idx.memBytes() }

func (r *Replica) checkOpen() error {
	if r.closed {
		return ErrClosed
	}
	if r.broken != nil {
		return fmt.Errorf("%w: replica must be reopened: %v", ErrClosed, r.broken)
	}
	return nil
}

// checkRangeOf is checkRange for callers holding no lock.
func (r *Replica) checkRangeOf(off, n int64) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.checkRange(off, n)
}

// checkRange checks [off, off+n) against the volume size. Callers hold
// mu or opMu.
func (r *Replica) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > r.size || n > r.size-off {
		return fmt.Errorf("%w: [%d, +%d) outside volume of %d bytes", ErrOutOfRange, off, n, r.size)
	}
	return nil
}

// Close flushes the head and releases the directory. Later calls fail
// with ErrClosed.
func (r *Replica) Close() error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	r.closed = true
	var first error
	if err := r.syncHead(); err != nil {
		first = err
	}
	r.spareRun.Wait()
	select {
	case l := <-r.spares:
		l.f.Close()
		os.Remove(l.path)
	default:
	}
	for _, l := range r.layers {
		if err := l.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	if err := r.ms.close(); err != nil && first == nil {
		first = err
	}
	if err := r.cbt.close(r.trackers, r.sessionGen); err != nil && first == nil {
		first = err
	}
	r.lockf.Close()
	return first
}
