package replica

import (
	"slices"
	"sync"
	"unsafe"
)

// The layer index maps every block of the volume to its owner: the chain
// position (1 = oldest layer, n = head) of the topmost layer holding data
// for it, or 0 when no layer does (the block reads as zeroes).
//
// It is a two-level run-length table. The volume is split into chunks of
// 65536 blocks (256 MiB); each chunk holds a sorted slice of runs, one
// uint32 per run: start block within the chunk (high 16 bits) and owner
// (low 16 bits). A chunk nobody wrote is a nil slice. Lookup is a binary
// search inside one chunk (O(log runs)); memory is 4 bytes per run
// boundary, i.e. proportional to the fragmentation of the data, not to the
// volume size: an empty 1 TiB volume costs 65536 chunk headers (3 MiB).
// Small chunks keep inserts cheap (memmove of at most 16 KiB).
// Each chunk has its own RWMutex so writers to different chunks never
// contend.
const (
	chunkShift  = 12
	chunkBlocks = 1 << chunkShift
)

type chunk struct {
	mu   sync.RWMutex
	runs []uint32 // start<<16 | owner; empty or runs[0] starts at 0
}

func runStart(r uint32) uint32 { return r >> 16 }
func runOwner(r uint32) uint16 { return uint16(r) }
func mkRun(start uint32, o uint16) uint32 {
	return start<<16 | uint32(o)
}

type index struct {
	blocks int64
	chunks []chunk
}

func newIndex(blocks int64) *index {
	n := (blocks + chunkBlocks - 1) >> chunkShift
	return &index{blocks: blocks, chunks: make([]chunk, n)}
}

// find returns the index of the run containing off (runs non-empty).
func (c *chunk) find(off uint32) int {
	// first run with start > off, minus one (runs sort by start, and
	// start > off is r >= (off+1)<<16 whatever the owner bits)
	key := (off + 1) << 16
	runs := c.runs
	lo, hi := 0, len(runs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if runs[m] < key {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo - 1
}

// get returns the owner of off and the end (exclusive, within the chunk)
// of the run holding it.
func (c *chunk) get(off uint32) (uint16, uint32) {
	if len(c.runs) == 0 {
		return 0, chunkBlocks
	}
	i := c.find(off)
	end := uint32(chunkBlocks)
	if i+1 < len(c.runs) {
		end = runStart(c.runs[i+1])
	}
	return runOwner(c.runs[i]), end
}

// set assigns owner o to blocks [lo, hi) of the chunk.
func (c *chunk) set(lo, hi uint32, o uint16) {
	if lo >= hi {
		return
	}
	if len(c.runs) == 0 {
		if o == 0 {
			return
		}
		c.runs = []uint32{mkRun(0, 0)}
	}
	i := c.find(lo)
	if runOwner(c.runs[i]) == o && (i+1 == len(c.runs) || runStart(c.runs[i+1]) >= hi) {
		return // already owned (the common case of a rewrite)
	}
	if runStart(c.runs[i]) < lo {
		i++ // keep the run starting before lo
	}
	// j: first run with start > hi (runs starting in [lo, hi] are replaced)
	j := i
	for j < len(c.runs) && runStart(c.runs[j]) <= hi {
		j++
	}
	// the run holding hi (j-1 >= 0: runs[0] starts at 0) continues after
	var tail uint16
	if hi < chunkBlocks {
		tail = runOwner(c.runs[j-1])
	}
	seg := [2]uint32{mkRun(lo, o), mkRun(hi, tail)}
	n := 2
	if hi >= chunkBlocks {
		n = 1
	}
	// grow by a quarter, not Go's doubling: memory is the budget here
	if need := len(c.runs) - (j - i) + n; need > cap(c.runs) {
		nr := make([]uint32, len(c.runs), need+need/4+2)
		copy(nr, c.runs)
		c.runs = nr
	}
	c.runs = slices.Replace(c.runs, i, j, seg[:n]...)
	// merge equal neighbours around the replaced segment; runs before
	// from and after to were already distinct from their neighbours
	from := max(i-1, 0)
	to := min(i+n+1, len(c.runs))
	w := from + 1
	for k := from + 1; k < to; k++ {
		if runOwner(c.runs[k]) == runOwner(c.runs[w-1]) {
			continue
		}
		c.runs[w] = c.runs[k]
		w++
	}
	if w < to {
		c.runs = append(c.runs[:w], c.runs[to:]...)
	}
	// first run must start at 0 (it always does: run 0 is never removed
	// unless lo == 0, in which case seg[0] starts at 0)
	if len(c.runs) == 1 && runOwner(c.runs[0]) == 0 {
		c.runs = nil
	}
	if cap(c.runs) > 64 && len(c.runs) < cap(c.runs)/4 {
		c.runs = slices.Clip(slices.Clone(c.runs))
	}
}

// lookup returns the owner of block b and the first block after b's run.
func (x *index) lookup(b int64) (uint16, int64) {
	c := &x.chunks[b>>chunkShift]
	base := b &^ (chunkBlocks - 1)
	c.mu.RLock()
	o, end := c.get(uint32(b - base))
	c.mu.RUnlock()
	return o, min(base+int64(end), x.blocks)
}

// set assigns owner o to blocks [b0, b1).
func (x *index) set(b0, b1 int64, o uint16) {
	for b0 < b1 {
		ci := b0 >> chunkShift
		base := ci << chunkShift
		e := min(b1, base+chunkBlocks)
		c := &x.chunks[ci]
		c.mu.Lock()
		c.set(uint32(b0-base), uint32(e-base), o)
		c.mu.Unlock()
		b0 = e
	}
}

// setIfLower assigns owner o to the blocks of [b0, b1) whose owner is
// lower than o, atomically per chunk.
func (x *index) setIfLower(b0, b1 int64, o uint16) {
	for b0 < b1 {
		ci := b0 >> chunkShift
		base := ci << chunkShift
		e := min(b1, base+chunkBlocks)
		c := &x.chunks[ci]
		c.mu.Lock()
		for off := uint32(b0 - base); off < uint32(e-base); {
			cur, end := c.get(off)
			end = min(end, uint32(e-base))
			if cur < o {
				c.set(off, end, o)
			}
			off = end
		}
		c.mu.Unlock()
		b0 = e
	}
}

// all reports whether every block of [b0, b1) is owned by o.
func (x *index) all(b0, b1 int64, o uint16) bool {
	for b0 < b1 {
		own, end := x.lookup(b0)
		if own != o {
			return false
		}
		b0 = end
	}
	return true
}

// remap replaces every owner with f(owner). Callers hold the replica's
// exclusive chain lock.
func (x *index) remap(f func(uint16) uint16) {
	for i := range x.chunks {
		c := &x.chunks[i]
		c.mu.Lock()
		w := 0
		for _, r := range c.runs {
			o := f(runOwner(r))
			if w > 0 && runOwner(c.runs[w-1]) == o {
				continue
			}
			c.runs[w] = mkRun(runStart(r), o)
			w++
		}
		c.runs = c.runs[:w]
		if len(c.runs) == 1 && runOwner(c.runs[0]) == 0 {
			c.runs = nil
		}
		c.mu.Unlock()
	}
}

// forEach calls fn for every maximal run of blocks with a non-zero owner.
func (x *index) forEach(fn func(b0, b1 int64, o uint16)) {
	for i := range x.chunks {
		c := &x.chunks[i]
		base := int64(i) << chunkShift
		c.mu.RLock()
		runs := slices.Clone(c.runs)
		c.mu.RUnlock()
		for k, r := range runs {
			if runOwner(r) == 0 {
				continue
			}
			end := int64(chunkBlocks)
			if k+1 < len(runs) {
				end = int64(runStart(runs[k+1]))
			}
			fn(base+int64(runStart(r)), min(base+end, x.blocks), runOwner(r))
		}
	}
}

// memBytes returns the memory held by the index (headers and run arrays).
func (x *index) memBytes() int64 {
	n := int64(unsafe.Sizeof(*x)) + int64(len(x.chunks))*int64(unsafe.Sizeof(chunk{}))
	for i := range x.chunks {
		c := &x.chunks[i]
		c.mu.RLock()
		n += int64(cap(c.runs)) * 4
		c.mu.RUnlock()
	}
	return n
}
