package engine

import (
	"slices"
	"sync"
)

// rangeLocks serialises writes that touch the same lock chunk while a
// rebuild is running: a write to a rebuilding replica may need a
// read-modify-write of its edge blocks (the replica takes only block-aligned
// writes then), and two writes to the same block must not interleave their
// read and write steps. Chunks hash onto a fixed set of mutexes; a write locks
// the distinct stripes it needs in ascending order, so it cannot deadlock.
type rangeLocks struct {
	stripes [1024]sync.Mutex
}

const lockChunkShift = 16 // 64 KiB chunks

func (l *rangeLocks) lock(off, length int64) func() {
	if length <= 0 {
		length = 1
	}
	first, last := off>>lockChunkShift, (off+length-1)>>lockChunkShift
	n := int(last - first + 1)
	if n > len(l.stripes) {
		n = len(l.stripes)
	}
	idx := make([]int, 0, n)
	for c := first; c <= last && len(idx) < len(l.stripes); c++ {
		idx = append(idx, int(c%int64(len(l.stripes))))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		l.stripes[i].Lock()
	}
	return func() {
		for _, i := range idx {
			l.stripes[i].Unlock()
		}
	}
}
