package engine

import (
	"slices"
	"sync"
)

// rangeLocks serialise mutations that touch the same lock chunk:
//
//   - Replicas apply concurrent requests in any order, so two overlapping
//     writes in flight at once could land in one order on one replica and
//     in the other order on another, and the replicas would then differ for
//     good. Holding the chunk's lock from dispatch until every replica
//     answered makes overlapping mutations reach all replicas in the same
//     order.
//   - While a rebuild runs, a write to the rebuilding replica may need a
//     read-modify-write of its edge blocks (it takes only block-aligned
//     writes then), and a resync compares and repairs a chunk; neither may
//     interleave with another write to the chunk.
//
// Chunks hash onto a fixed set of mutexes; a mutation locks the distinct
// stripes it needs in ascending order, so it cannot deadlock. A lock may be
// released on another goroutine (the asynchronous path does).
type rangeLocks struct {
	stripes [1024]sync.Mutex
}

const lockChunkShift = 16 // 64 KiB chunks

// stripes returns the sorted distinct stripes of [off, off+length),
// appended to buf.
func (l *rangeLocks) stripesFor(off, length int64, buf []uint16) []uint16 {
	if length <= 0 {
		length = 1
	}
	first, last := off>>lockChunkShift, (off+length-1)>>lockChunkShift
	idx := buf[:0]
	if last-first+1 >= int64(len(l.stripes)) {
		for i := range l.stripes {
			idx = append(idx, uint16(i))
		}
		return idx
	}
	for c := first; c <= last; c++ {
		idx = append(idx, uint16(c%int64(len(l.stripes))))
	}
	if len(idx) > 1 && idx[len(idx)-1] < idx[0] { // wrapped around
		slices.Sort(idx)
	}
	return slices.Compact(idx)
}

func (l *rangeLocks) lockStripes(idx []uint16) {
	for _, i := range idx {
		l.stripes[i].Lock()
	}
}

func (l *rangeLocks) unlockStripes(idx []uint16) {
	for _, i := range idx {
		l.stripes[i].Unlock()
	}
}

// lock locks the stripes of [off, off+length) and returns the unlock.
func (l *rangeLocks) lock(off, length int64) func() {
	idx := l.stripesFor(off, length, nil)
	l.lockStripes(idx)
	return func() { l.unlockStripes(idx) }
}
