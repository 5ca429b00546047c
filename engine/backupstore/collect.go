package backupstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
)

const (
	// repackBelow: a pack whose referenced records are less than this
	// fraction of its record bytes is mostly garbage and is repacked.
	repackBelow = 0.5
	// consolidateAbove: GC rewrites the whole index into as few objects as
	// possible when there are more index objects than this.
	consolidateAbove = 16
)

// collection is what collect decided and did.
type collection struct {
	ix        *index
	live      map[*packInfo][]int // referenced records (entry indexes) per pack
	drop      []*packInfo         // no referenced record
	repack    []*packInfo         // mostly unreferenced
	adopted   []*packInfo         // unindexed, holding referenced blocks
	unindexed []packID            // unindexed, holding nothing referenced
	newPacks  []*packInfo
}

// collect removes what no listed backup references, holding the block set
// exclusively (l): packs with no referenced record are deleted, packs
// mostly unreferenced are repacked, and the index objects listing either
// are rewritten. With sweep (GC), packs no index lists are found by
// listing packs/ and removed, or adopted when their trailer shows a
// referenced block the index lacks, and a fragmented index is
// consolidated. The order keeps every referenced block findable at every
// step: new packs, then the new index, then old index objects, then old
// packs.
func (s *Store) collect(ctx context.Context, l *lock, dryRun, sweep bool) (GCResult, error) {
	var res GCResult
	refs, err := s.referencedBlocks(ctx)
	if err != nil {
		return res, err
	}
	res.ReferencedBlocks = len(refs)
	c := &collection{live: map[*packInfo][]int{}}
	if c.ix, err = s.loadIndex(ctx); err != nil {
		return res, err
	}
	if sweep {
		if err := s.sweepUnindexed(ctx, c, refs, &res); err != nil {
			return res, err
		}
	}
	c.classify(refs, &res)
	if dryRun {
		return res, nil
	}
	if err := s.repack(ctx, l, c, &res); err != nil {
		return res, err
	}
	if err := s.rewriteIndex(ctx, l, c, sweep, &res); err != nil {
		return res, err
	}
	var gone []packID
	for _, p := range append(c.drop, c.repack...) {
		gone = append(gone, p.id)
	}
	for _, id := range append(gone, c.unindexed...) {
		if err := l.valid(); err != nil {
			return res, err
		}
		if err := s.t.Delete(ctx, packKey(id)); err != nil {
			return res, fmt.Errorf("delete pack %s: %w", id, err)
		}
	}
	return res, nil
}

// sweepUnindexed finds the packs no index object lists and reads their
// trailers: those holding a referenced block the index lacks are adopted,
// the rest are garbage. A pack whose trailer cannot be read is kept.
func (s *Store) sweepUnindexed(ctx context.Context, c *collection, refs map[BlockID]struct{}, res *GCResult) error {
	sizes := map[packID]int64{}
	err := s.t.List(ctx, "packs/", func(o ObjectInfo) error {
		if id, ok := parsePackKey(o.Key); ok {
			if _, indexed := c.ix.packs[id]; !indexed {
				sizes[id] = o.Size
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	for id, size := range sizes {
		p, err := s.readTrailer(ctx, id, size)
		switch {
		case errors.Is(err, ErrCorrupt) || errors.Is(err, ErrFormat) || errors.Is(err, errShortObject):
			res.UnreadablePacks++
			continue
		case errors.Is(err, ErrNotFound):
			continue
		case err != nil:
			return err
		}
		needed := false
		for _, e := range p.entries {
			_, ref := refs[e.id]
			_, located := c.ix.blocks[e.id]
			needed = needed || (ref && !located)
		}
		if needed {
			c.adopted = append(c.adopted, p)
			res.AdoptedPacks++
		} else {
			c.unindexed = append(c.unindexed, id)
			res.UnindexedPacks++
		}
	}
	return nil
}

// classify finds each pack's referenced records (a block stored twice is
// referenced at the record the index locates it at) and decides which
// packs to drop and which to repack.
func (c *collection) classify(refs map[BlockID]struct{}, res *GCResult) {
	adopted := map[BlockID]blockLoc{}
	for _, p := range c.adopted {
		for i, e := range p.entries {
			if _, ok := adopted[e.id]; !ok {
				adopted[e.id] = blockLoc{p, i}
			}
		}
	}
	for id := range refs {
		loc, ok := c.ix.blocks[id]
		if !ok {
			loc, ok = adopted[id]
		}
		if ok {
			c.live[loc.pack] = append(c.live[loc.pack], loc.i)
		}
	}
	packs := make([]*packInfo, 0, len(c.ix.packs))
	for _, p := range c.ix.packs {
		packs = append(packs, p)
	}
	sort.Slice(packs, func(i, j int) bool { return packs[i].id.String() < packs[j].id.String() })
	for _, p := range packs {
		live := c.live[p]
		sort.Ints(live)
		var liveBytes int64
		for _, i := range live {
			liveBytes += p.entries[i].size
		}
		total := p.recordBytes()
		switch {
		case len(live) == 0:
			c.drop = append(c.drop, p)
			res.PacksDeleted++
		case float64(liveBytes) < repackBelow*float64(total):
			c.repack = append(c.repack, p)
			res.PacksRepacked++
			res.RepackedBytes += liveBytes
		default:
			continue
		}
		res.UnreferencedBlocks += len(p.entries) - len(live)
		res.UnreferencedBytes += total - liveBytes
	}
}

// repack copies the referenced records of each pack to repack into new
// packs, verifying each first (records are copied as stored: a record is
// bound to its block id, not to its pack). A pack with a referenced
// record that fails verification is kept as it is.
func (s *Store) repack(ctx context.Context, l *lock, c *collection, res *GCResult) error {
	if len(c.repack) == 0 {
		return nil
	}
	var mu sync.Mutex
	pk := s.newPacker(func(_ context.Context, p *packInfo) error {
		mu.Lock()
		c.newPacks = append(c.newPacks, p)
		mu.Unlock()
		return nil
	})
	var kept []*packInfo
	for _, p := range c.repack {
		if err := l.valid(); err != nil {
			return err
		}
		recs, ok, err := s.readLive(ctx, p, c.live[p])
		if err != nil {
			return err
		}
		if !ok {
			var liveBytes int64
			for _, i := range c.live[p] {
				liveBytes += p.entries[i].size
			}
			res.RepackSkipped++
			res.PacksRepacked--
			res.RepackedBytes -= liveBytes
			res.UnreferencedBlocks -= len(p.entries) - len(c.live[p])
			res.UnreferencedBytes -= p.recordBytes() - liveBytes
			continue
		}
		for k, i := range c.live[p] {
			if err := pk.add(ctx, p.entries[i].id, int(p.entries[i].plain), recs[k]); err != nil {
				return err
			}
		}
		kept = append(kept, p)
	}
	c.repack = kept
	return pk.flush(ctx)
}

// readLive reads and verifies the given records of a pack and returns
// copies of them as stored; ok is false if one is missing or corrupt.
func (s *Store) readLive(ctx context.Context, p *packInfo, live []int) (recs [][]byte, ok bool, err error) {
	reads := make([]blockRead, len(live))
	bs := 0
	for k, i := range live {
		reads[k] = blockRead{id: p.entries[i].id, loc: blockLoc{p, i}}
		bs = max(bs, int(p.entries[i].plain))
	}
	recs = make([][]byte, len(live))
	ok = true
	var mu sync.Mutex
	_, _, err = s.readBlocks(ctx, reads, bs, true, func(k int, raw, _ []byte, _ int, err error) error {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			ok = false
			return nil
		}
		recs[k] = append([]byte(nil), raw...)
		return nil
	})
	return recs, ok, err
}

// rewriteIndex replaces the index objects that list a dropped or repacked
// pack (with sweep and more than consolidateAbove objects: all of them)
// by new ones listing their remaining packs, the new packs and the
// adopted ones; then removes the replaced objects.
func (s *Store) rewriteIndex(ctx context.Context, l *lock, c *collection, sweep bool, res *GCResult) error {
	gone := map[packID]bool{}
	for _, p := range append(c.drop, c.repack...) {
		gone[p.id] = true
	}
	consolidate := sweep && len(c.ix.objects) > consolidateAbove
	var replaced []string
	for key, packs := range c.ix.objects {
		affected := consolidate
		for _, p := range packs {
			affected = affected || gone[p.id]
		}
		if affected {
			replaced = append(replaced, key)
		}
	}
	if len(replaced) == 0 && len(c.newPacks) == 0 && len(c.adopted) == 0 {
		return nil
	}
	sort.Strings(replaced)
	keep := append(append([]*packInfo(nil), c.newPacks...), c.adopted...)
	listed := map[packID]bool{}
	for _, key := range replaced {
		for _, p := range c.ix.objects[key] {
			if !gone[p.id] && !listed[p.id] {
				listed[p.id] = true
				keep = append(keep, p)
			}
		}
	}
	if err := l.valid(); err != nil {
		return err
	}
	if _, err := s.putIndex(ctx, keep); err != nil {
		return err
	}
	for _, key := range replaced {
		if err := l.valid(); err != nil {
			return err
		}
		if err := s.t.Delete(ctx, key); err != nil {
			return fmt.Errorf("delete index %s: %w", key, err)
		}
	}
	res.IndexObjectsReplaced = len(replaced)
	return nil
}
