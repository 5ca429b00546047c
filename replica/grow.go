package replica

import (
	"fmt"
	"os"
	"sync/atomic"
)

// Grow raises the volume size to newSize (a multiple of BlockSize) while
// the replica stays open; it never shrinks (ErrShrink), and growing to the
// current size is a no-op. Every snapshot keeps its own size
// (SnapshotInfo.Size); the new range reads as zeroes in every view until
// written.
//
// The metadata commit is the switch: before it the replica has the old
// size, after it the new one. Layer files are extended (sparse, no data)
// only after the commit, because Open refuses a layer file larger than
// the volume but extends a shorter one; a crash between the two is
// completed by Open. A failure to extend after the commit leaves the
// replica needing a reopen (which finishes it), like a failed merge.
// I/O is paused for the commit and the extension.
func (r *Replica) Grow(newSize int64) error {
	if newSize <= 0 || newSize%BlockSize != 0 || newSize > maxSize {
		return fmt.Errorf("%w: size %d must be a positive multiple of %d up to %d", ErrInvalid, newSize, BlockSize, int64(maxSize))
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	old := r.size
	switch {
	case newSize < old:
		return fmt.Errorf("%w: replica is %d bytes, requested %d", ErrShrink, old, newSize)
	case newSize == old:
		return nil
	}
	// the spare head file was made at the old size
	r.dropSpare()
	m := r.meta.clone()
	m.Size = newSize
	for i := range m.Layers[:len(m.Layers)-1] {
		if m.Layers[i].Size == 0 {
			m.Layers[i].Size = old
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.writeMeta(m); err != nil {
		return err
	}
	if err := r.extendLayers(newSize); err != nil {
		r.broken = fmt.Errorf("grow to %d bytes: %w", newSize, err)
		return err
	}
	r.idx.grow(newSize / BlockSize)
	for _, t := range r.trackers {
		t.grow(newSize)
	}
	// the trackers' file is laid out for the old size: writes to the new
	// range must not land in it before it is rewritten
	if err := r.cbt.rewrite(newSize, r.trackers, r.sessionGen, cbtBootID()); err != nil {
		r.broken = fmt.Errorf("grow to %d bytes: %w", newSize, err)
		return err
	}
	r.size, r.blocks = newSize, newSize/BlockSize
	r.setChain(m, r.layers)
	r.refillSpare()
	return nil
}

// extendLayers sets every layer file's size to size (holes). Callers hold
// mu exclusively.
func (r *Replica) extendLayers(size int64) error {
	for _, l := range r.layers {
		if err := hook("grow"); err != nil {
			return ioErr("extend layer", err)
		}
		if err := l.f.Truncate(size); err != nil {
			return ioErr("extend layer", err)
		}
	}
	return nil
}

// dropSpare waits for the spare head file being made and deletes it.
// Callers hold opMu.
func (r *Replica) dropSpare() {
	r.spareRun.Wait()
	select {
	case l := <-r.spares:
		l.f.Close()
		os.Remove(l.path)
	default:
	}
}

// snapshotSize is the size of the volume as of layer rec (the volume's
// size for the head and for layers frozen since the last Grow).
func (r *Replica) snapshotSize(rec layerRecord) int64 {
	if rec.Size != 0 {
		return rec.Size
	}
	return r.size
}

// grow extends the index to blocks; the new blocks are owned by nobody.
// Callers hold the replica's exclusive chain lock.
func (x *index) grow(blocks int64) {
	if n := (blocks + chunkBlocks - 1) >> chunkShift; n > int64(len(x.chunks)) {
		chunks := make([]chunk, n)
		for i := range x.chunks {
			chunks[i].runs = x.chunks[i].runs
		}
		x.chunks = chunks
	}
	x.blocks = blocks
}

// grow extends the bitmap to cover size bytes. Callers hold the replica's
// exclusive chain lock.
func (t *changeTracker) grow(size int64) {
	regions := (size + 1<<cbtRegionShift - 1) >> cbtRegionShift
	need := (regions + 63) / 64
	if need <= int64(len(t.bits)) {
		return
	}
	bits := make([]atomic.Uint64, need)
	for i := range t.bits {
		bits[i].Store(t.bits[i].Load())
	}
	t.bits = bits
}
