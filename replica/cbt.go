package replica

import (
	"fmt"
	"math/bits"
	"sync/atomic"
)

// Changed-block tracking. When SetGeneration raises the generation to g,
// the replica starts a bitmap of the regions the head is written in from
// then on. ChangedSince(g) returns them, so a replica that left the
// volume at generation g and comes back copies only those regions from a
// healthy one instead of a rebuild snapshot's whole layers. The bitmaps
// persist in replica.cbt (cbtfile.go) and survive restarts; after a
// revert, a rebuild reset or a crash of the machine (not just the
// process) while the replica was open, ChangedSince reports ErrNotFound
// and the engine falls back to a rebuild or a whole-head comparison.
//
// The tracker started when the generation goes from even (closed
// cleanly) to odd (an engine opened the volume) is the session tracker,
// reported as Info().SessionStart: it holds every region written since
// the last clean close, so after an unclean shutdown the engine compares
// replicas over those regions only instead of their whole heads.
const (
	// cbtRegionShift: one bit per 64 KiB region, 2 MiB per TiB per bitmap.
	cbtRegionShift = 16
	// cbtMaxTrackers bounds the bitmaps kept (the newest generations).
	cbtMaxTrackers = 4
)

type changeTracker struct {
	gen  uint64
	bits []atomic.Uint64
	// cf is the file the bitmap is persisted in (nil: memory only, as
	// for the merge tracker), in slot.
	cf   *cbtFile
	slot int
}

func newChangeTracker(gen uint64, size int64) *changeTracker {
	regions := (size + 1<<cbtRegionShift - 1) >> cbtRegionShift
	return &changeTracker{gen: gen, bits: make([]atomic.Uint64, (regions+63)/64)}
}

// mark sets the bits of the regions overlapping [off, end). A persisted
// tracker writes each word that gains bits to its file first (see
// cbtFile.setBits); the fast path, every bit already set, is one atomic
// load per 64 regions.
func (t *changeTracker) mark(off, end int64) error {
	if end <= off {
		return nil
	}
	r0, r1 := off>>cbtRegionShift, (end-1)>>cbtRegionShift
	for w := r0 / 64; w <= r1/64; w++ {
		lo, hi := max(r0, w*64)%64, min(r1, w*64+63)%64
		mask := (^uint64(0) >> (63 - hi)) &^ (uint64(1)<<lo - 1)
		if t.bits[w].Load()&mask == mask {
			continue
		}
		if t.cf == nil {
			t.bits[w].Or(mask)
			continue
		}
		if err := t.cf.setBits(t, w, mask); err != nil {
			return err
		}
	}
	return nil
}

// extents returns the marked regions within [off, end) as merged extents
// clipped to size.
func (t *changeTracker) extents(off, end, size int64) []Extent {
	out := []Extent{}
	r0, r1 := off>>cbtRegionShift, (end+1<<cbtRegionShift-1)>>cbtRegionShift
	for r := r0; r < r1; {
		w := t.bits[r/64].Load() >> (r % 64)
		if w == 0 {
			r += 64 - r%64
			continue
		}
		r += int64(bits.TrailingZeros64(w))
		if r >= r1 {
			break
		}
		s, e := max(r<<cbtRegionShift, off&^(BlockSize-1)), min((r+1)<<cbtRegionShift, end, size)
		if n := len(out); n > 0 && out[n-1].End() == s {
			out[n-1].Length = e - out[n-1].Offset
		} else {
			out = append(out, Extent{Offset: s, Length: e - s})
		}
		r++
	}
	return out
}

// dropOldTrackers keeps the newest cbtMaxTrackers trackers, always
// including the session tracker (started at generation session): however
// many times the generation is bumped during a session, an unclean
// shutdown still finds every change since it began.
func dropOldTrackers(ts []*changeTracker, session uint64) []*changeTracker {
	if len(ts) <= cbtMaxTrackers {
		return ts
	}
	keep := ts[len(ts)-cbtMaxTrackers:]
	if session != 0 && keep[0].gen > session {
		for _, t := range ts {
			if t.gen == session {
				return append([]*changeTracker{t}, ts[len(ts)-cbtMaxTrackers+1:]...)
			}
		}
	}
	return append([]*changeTracker(nil), keep...)
}

// markChanged records a change of the head in [off, end) in every
// tracker, before the change is made: a change the trackers' file cannot
// record is not made (ioErr). Callers hold mu (shared is enough).
func (r *Replica) markChanged(off, end int64) error {
	for _, t := range r.trackers {
		if err := t.mark(off, end); err != nil {
			return err
		}
	}
	if r.mergeTrk != nil {
		return r.mergeTrk.mark(off, end)
	}
	return nil
}

// ChangedSince returns, within [off, off+length), the extents (64 KiB
// regions, clipped to the volume) the head was written, trimmed or zeroed
// in since SetGeneration raised the generation to gen or to a lower value
// still tracked: a superset of the blocks changed since then. It fails
// with ErrNotFound when no bitmap covers gen (see above). The engine must
// raise the generation before it acknowledges a write a departed replica
// missed, so the bitmap sees every such write.
func (r *Replica) ChangedSince(gen uint64, off, length int64) ([]Extent, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	if err := r.checkRange(off, length); err != nil {
		return nil, err
	}
	// the newest bitmap started at or before gen
	var best *changeTracker
	for _, t := range r.trackers {
		if t.gen <= gen && (best == nil || t.gen > best.gen) {
			best = t
		}
	}
	if best == nil || gen > r.meta.Generation {
		return nil, fmt.Errorf("%w: changes since generation %d are not tracked (generation %d)", ErrNotFound, gen, r.meta.Generation)
	}
	return best.extents(off, off+length, r.size), nil
}
