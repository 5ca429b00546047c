package backupstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
)

// maxRangeGap is the largest run of unwanted bytes between two wanted
// records that one range read still spans: reading a few KiB more is
// cheaper than another request.
const maxRangeGap = 64 << 10

// blockRead is one block a reader wants and where the index puts it (a
// nil pack: the block is in no index).
type blockRead struct {
	id  BlockID
	loc blockLoc
}

// rangeRead is one range request: records of one pack close together.
type rangeRead struct {
	pack  *packInfo
	off   int64
	n     int64
	items []int // indexes into the reads
}

// rangeCap bounds one range read (and a reader's buffer): 8 MiB, or one
// record of the largest size blocks of blockSize may be stored in.
func rangeCap(blockSize int) int64 { return max(8<<20, maxObject(int64(blockSize))) }

// planRanges groups reads into range requests: packs in the order the
// reads first use them (restores write in volume order), records of a
// pack by offset, adjacent ones (gaps up to maxRangeGap) in one request
// of at most limit bytes.
func planRanges(reads []blockRead, limit int64) []rangeRead {
	byPack := map[*packInfo][]int{}
	var packs []*packInfo
	for k, r := range reads {
		if r.loc.pack == nil {
			continue
		}
		if _, ok := byPack[r.loc.pack]; !ok {
			packs = append(packs, r.loc.pack)
		}
		byPack[r.loc.pack] = append(byPack[r.loc.pack], k)
	}
	var out []rangeRead
	for _, p := range packs {
		items := byPack[p]
		sort.Slice(items, func(a, b int) bool { return reads[items[a]].loc.entry().off < reads[items[b]].loc.entry().off })
		cur := -1
		for _, k := range items {
			e := reads[k].loc.entry()
			if cur >= 0 {
				c := &out[cur]
				if end := c.off + c.n; e.off >= end && e.off-end <= maxRangeGap && e.off+e.size-c.off <= limit {
					c.n = e.off + e.size - c.off
					c.items = append(c.items, k)
					continue
				}
			}
			out = append(out, rangeRead{pack: p, off: e.off, n: e.size, items: []int{k}})
			cur = len(out) - 1
		}
	}
	return out
}

// readBlocks fetches blocks with range reads of their packs (bounded
// concurrency, each worker owning one range buffer and one block buffer),
// decodes and verifies each against its id and calls fn with its stored
// record (only with keepRaw, copied before decoding), its plaintext (both
// valid only during the call) and the record's stored size. A block that
// is missing (in no index, or its pack is gone) or corrupt reaches fn as
// an error wrapping ErrMissingBlock or ErrCorrupt and naming the block; fn
// decides whether that stops the read. It returns the range requests made
// and the bytes they fetched.
func (s *Store) readBlocks(ctx context.Context, reads []blockRead, blockSize int, keepRaw bool,
	fn func(k int, raw, data []byte, stored int, err error) error) (int, int64, error) {
	for k, r := range reads {
		if r.loc.pack == nil {
			if err := fn(k, nil, nil, 0, fmt.Errorf("%w: block %s (in no index)", ErrMissingBlock, r.id)); err != nil {
				return 0, 0, err
			}
		}
	}
	limit := rangeCap(blockSize)
	ranges := planRanges(reads, limit)
	var requests, fetched atomic.Int64
	err := parallelWorkers(ctx, max(4, s.opts.Concurrency/2), len(ranges), func() func(context.Context, int) error {
		var rbuf, raw []byte
		plain := make([]byte, blockSize)
		return func(ctx context.Context, i int) error {
			rr := ranges[i]
			b, err := getRange(ctx, s.t, packKey(rr.pack.id), rr.off, rr.n, rbuf)
			if err != nil {
				return s.failRange(reads, rr, err, fn)
			}
			rbuf = b
			requests.Add(1)
			fetched.Add(rr.n)
			for _, k := range rr.items {
				id, e := reads[k].id, reads[k].loc.entry()
				rec := b[e.off-rr.off : e.off-rr.off+e.size]
				if keepRaw {
					raw = append(raw[:0], rec...)
				}
				data, err := s.decodeBlock(id, rec, plain)
				if errors.Is(err, ErrKeyRequired) {
					return err
				}
				if err := fn(k, raw, data, int(e.size), err); err != nil {
					return err
				}
			}
			return nil
		}
	})
	return int(requests.Load()), fetched.Load(), err
}

// failRange hands every block of a range that could not be read to fn as
// missing (the pack is gone) or corrupt (the pack is shorter than its
// index says); other errors stop the read.
func (s *Store) failRange(reads []blockRead, rr rangeRead, err error, fn func(int, []byte, []byte, int, error) error) error {
	missing := errors.Is(err, ErrNotFound)
	if !missing && !errors.Is(err, errShortObject) {
		return fmt.Errorf("pack %s: %w", rr.pack.id, err)
	}
	for _, k := range rr.items {
		id := reads[k].id
		berr := fmt.Errorf("%w: block %s: pack %s: %v", ErrCorrupt, id, rr.pack.id, err)
		if missing {
			berr = fmt.Errorf("%w: block %s (pack %s is missing)", ErrMissingBlock, id, rr.pack.id)
		}
		if err := fn(k, nil, nil, 0, berr); err != nil {
			return err
		}
	}
	return nil
}

// decodeBlock decodes one stored record (in place) into plain and checks
// it against its content address.
func (s *Store) decodeBlock(id BlockID, rec, plain []byte) ([]byte, error) {
	data, err := s.codec.decodeAtMost(plain, kindBlock, rec, id[:], int64(len(plain)))
	if err != nil {
		if errors.Is(err, ErrKeyRequired) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: block %s: %v", ErrCorrupt, id, err)
	}
	if got := s.codec.blockID(data); got != id {
		return nil, fmt.Errorf("%w: block %s: content hashes to %s", ErrCorrupt, id, got)
	}
	return data, nil
}
