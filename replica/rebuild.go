package replica

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Rebuild, target side. See doc.go for the whole protocol.

// ResetForRebuild prepares this replica to receive layers from a healthy
// source. keep names the oldest snapshots this replica already shares with
// the source (they must be, in order, a prefix of its chain); every other
// layer, including the head, is discarded. receive lists the source's
// newer snapshots, oldest first: each becomes an empty, Incomplete layer,
// and a new empty head is placed on top. The head takes live writes at
// once (block-aligned writes only, see ErrUnaligned) while the layers
// below are filled with WriteLayer and sealed with CommitLayer. A
// snapshot's Checksum, if given, is verified by CommitLayer.
func (r *Replica) ResetForRebuild(keep []string, receive []SnapshotInfo) error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	if len(keep) > len(r.layers)-1 {
		return fmt.Errorf("%w: keep lists %d snapshots, replica has %d", ErrInvalid, len(keep), len(r.layers)-1)
	}
	for i, name := range keep {
		l := r.layers[i]
		if l.rec.Name != name || l.rec.Incomplete {
			return fmt.Errorf("%w: keep[%d] = %q but layer %d is %q (incomplete=%v)", ErrInvalid, i, name, i+1, l.rec.Name, l.rec.Incomplete)
		}
	}
	for _, s := range receive {
		if err := validName(s.Name); err != nil {
			return err
		}
	}
	return r.replaceTop(len(keep), receive)
}

// incompleteLayer returns the chain position of a layer being received.
// Callers hold mu or opMu.
func (r *Replica) incompleteLayer(name string) (int, error) {
	pos, ok := r.names[name]
	if !ok {
		return 0, fmt.Errorf("%w: snapshot %q", ErrNotFound, name)
	}
	if !r.layers[pos-1].rec.Incomplete {
		return 0, fmt.Errorf("%w: snapshot %q is not being received", ErrReadOnly, name)
	}
	return pos, nil
}

// incompleteLayerOf is incompleteLayer for callers holding no lock.
func (r *Replica) incompleteLayerOf(name string) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return 0, err
	}
	return r.incompleteLayer(name)
}

// WriteLayer writes block-aligned data into a layer being received. Blocks
// the head (or a newer received layer) already holds keep reading from
// there.
func (r *Replica) WriteLayer(name string, p []byte, off int64) error {
	return r.WriteLayerExtents(name, []Extent{{Offset: off, Length: int64(len(p))}}, p)
}

// WriteLayerExtents writes many block-aligned extents into a layer being
// received in one call: data holds the extents' bytes back to back, in
// the order of extents. It is the vectored form of WriteLayer, so a
// rebuild of sparse data (4 KiB data / 4 KiB hole) costs one request per
// batch rather than one per extent. Every extent is validated before any
// is written.
func (r *Replica) WriteLayerExtents(name string, extents []Extent, data []byte) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	pos, err := r.incompleteLayer(name)
	if err != nil {
		return err
	}
	var total int64
	for _, e := range extents {
		if err := r.checkRange(e.Offset, e.Length); err != nil {
			return err
		}
		if e.Offset%BlockSize != 0 || e.Length%BlockSize != 0 {
			return fmt.Errorf("%w: layer writes must be block aligned (offset %d, length %d)", ErrInvalid, e.Offset, e.Length)
		}
		total += e.Length
	}
	if total != int64(len(data)) {
		return fmt.Errorf("%w: extents cover %d bytes but %d bytes of data", ErrInvalid, total, len(data))
	}
	l := r.layers[pos-1]
	if len(extents) == 1 && len(data) >= directReadMin && directAligned(data, extents[0].Offset) {
		// One large aligned extent (fully written data): straight to the
		// disk, pipelined with the other requests in flight, instead of
		// piling up dirty pages that CommitLayer's fdatasync would then
		// write out with the copy stalled behind it.
		e := extents[0]
		simWrite(l.path, l.fd, e.Offset, e.Length)
		if err := writeDirect(l.path, data, e.Offset); err == nil {
			r.idx.setIfLower(e.Offset/BlockSize, e.End()/BlockSize, uint16(pos))
			return nil
		}
		// no O_DIRECT here: buffered
	}
	var done int64
	for _, e := range extents {
		if e.Length == 0 {
			continue
		}
		simWrite(l.path, l.fd, e.Offset, e.Length)
		if err := pwriteCached(l.fd, data[done:done+e.Length], e.Offset); err != nil {
			return ioErr("write layer", err)
		}
		r.idx.setIfLower(e.Offset/BlockSize, e.End()/BlockSize, uint16(pos))
		done += e.Length
	}
	return nil
}

// CommitLayer makes a received layer durable, verifies it against the
// source's checksum when ResetForRebuild was given one, and marks it
// complete. When no incomplete layer remains, Info().Rebuilding is false
// and the replica holds the same chain as the source.
func (r *Replica) CommitLayer(name string) error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	pos, err := r.incompleteLayer(name)
	if err != nil {
		return err
	}
	l := r.layers[pos-1]
	if err := fdatasync(l); err != nil {
		return ioErr("fdatasync", err)
	}
	if want := l.rec.Checksum; want != "" {
		sum, err := layerChecksum(l.f, r.size)
		if err != nil {
			return err
		}
		if sum != want {
			return fmt.Errorf("%w: received layer %q has checksum %s, source has %s", ErrCorrupt, name, sum, want)
		}
	}
	m := r.meta.clone()
	m.Layers[pos-1].Incomplete = false
	if err := r.writeMeta(m); err != nil {
		return err
	}
	r.mu.Lock()
	r.setChain(m, r.layers)
	r.mu.Unlock()
	return nil
}

// Rebuild, source side.

// LayerExtents returns the allocated extents of one layer (a snapshot by
// name, or the head for "") within [off, off+length), block-aligned and
// sorted. Together with ReadLayer it streams exactly the data a rebuild
// target lacks.
func (r *Replica) LayerExtents(name string, off, length int64) ([]Extent, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	if err := r.checkRange(off, length); err != nil {
		return nil, err
	}
	pos, err := r.position(name)
	if err != nil {
		return nil, err
	}
	ext, err := dataExtents(r.layers[pos-1].fd, off&^(BlockSize-1), off+length)
	if err != nil {
		return nil, ioErr("seek data", err)
	}
	if ext == nil {
		ext = []Extent{}
	}
	return ext, nil
}

// ReadLayer reads the raw content of one layer (holes read as zeroes),
// not the merged view of the chain.
func (r *Replica) ReadLayer(name string, p []byte, off int64) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return 0, err
	}
	if err := r.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	pos, err := r.position(name)
	if err != nil {
		return 0, err
	}
	l := r.layers[pos-1]
	if len(p) >= directReadMin && directAligned(p, off) {
		if err := readDirect(l.path, p, off); err == nil {
			return len(p), nil
		}
		// no O_DIRECT here (tmpfs) or a stricter alignment: buffered
	}
	n, err := l.f.ReadAt(p, off)
	if err != nil {
		return n, ioErr("read layer", err)
	}
	return n, nil
}

// directReadMin is the smallest ReadLayer that bypasses the page cache.
// Rebuilds stream whole layers once: buffered, concurrent chunk reads of
// cold data kept the source busy in page-cache work at a sixth of the
// disk's rate (profiled), and would evict the volume's working set.
const directReadMin = 128 << 10

// directAligned reports whether p and off suit O_DIRECT (4 KiB covers
// every logical block size Cairn runs on).
func directAligned(p []byte, off int64) bool {
	return len(p)%BlockSize == 0 && off%BlockSize == 0 && uintptr(unsafe.Pointer(&p[0]))%BlockSize == 0
}

// writeDirect writes p at off to path with O_DIRECT.
func writeDirect(path string, p []byte, off int64) error {
	return withDirect(path, unix.O_WRONLY, func(fd int) error { return pwriteFull(fd, p, off) })
}

// readDirect reads p at off from path with O_DIRECT. The kernel writes
// back dirty page-cache data in the range first, so the read sees every
// write made through the buffered descriptor.
func readDirect(path string, p []byte, off int64) error {
	return withDirect(path, unix.O_RDONLY, func(fd int) error { return preadFull(fd, p, off) })
}

// withDirect runs fn on a descriptor of path opened with O_DIRECT and
// mode (O_RDONLY or O_WRONLY), closed afterwards.
func withDirect(path string, mode int, fn func(fd int) error) error {
	fd, err := unix.Open(path, mode|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return fn(fd)
}
