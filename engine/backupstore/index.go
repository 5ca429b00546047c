package backupstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

const indexPrefix = "index/"

// index locates every indexed block: the union of all index objects. It
// is built whole and never changed afterwards, so operations share it.
type index struct {
	objects map[string][]*packInfo // index object key -> the packs it lists
	packs   map[packID]*packInfo
	blocks  map[BlockID]blockLoc
}

// blockLoc is where a block's record is: entry i of a pack.
type blockLoc struct {
	pack *packInfo
	i    int
}

func (l blockLoc) entry() packEntry { return l.pack.entries[l.i] }

// buildIndex merges index objects. A pack listed twice (a GC interrupted
// between writing a consolidated index and removing the old ones) counts
// once; a block stored twice (two backups uploading it at once) is
// located at its first record in key order.
func buildIndex(objects map[string][]*packInfo) *index {
	ix := &index{objects: objects, packs: map[packID]*packInfo{}, blocks: map[BlockID]blockLoc{}}
	keys := make([]string, 0, len(objects))
	for k := range objects {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, p := range objects[k] {
			if _, dup := ix.packs[p.id]; dup {
				continue
			}
			ix.packs[p.id] = p
			for i, e := range p.entries {
				if _, ok := ix.blocks[e.id]; !ok {
					ix.blocks[e.id] = blockLoc{p, i}
				}
			}
		}
	}
	return ix
}

func validIndexKey(key string) bool {
	name, ok := strings.CutPrefix(key, indexPrefix)
	if !ok || len(name) != 32 {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil
}

// loadIndex lists index/ and returns the index of every object there.
// Objects already read are kept by the store (an index object is never
// rewritten: a new one gets a new key), so a store used for many
// operations reads each index object once.
func (s *Store) loadIndex(ctx context.Context) (*index, error) {
	var keys []string
	err := s.t.List(ctx, indexPrefix, func(o ObjectInfo) error {
		if validIndexKey(o.Key) {
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list index: %w", err)
	}
	s.idxMu.Lock()
	cached := s.idx
	s.idxMu.Unlock()
	objects := make(map[string][]*packInfo, len(keys))
	var missing []string
	for _, k := range keys {
		if cached != nil {
			if p, ok := cached.objects[k]; ok {
				objects[k] = p
				continue
			}
		}
		missing = append(missing, k)
	}
	if cached != nil && len(missing) == 0 && len(objects) == len(cached.objects) {
		return cached, nil
	}
	var mu sync.Mutex
	err = parallel(ctx, s.opts.Concurrency, len(missing), func(i int) error {
		packs, err := s.readIndexObject(ctx, missing[i])
		if errors.Is(err, ErrNotFound) {
			return nil // replaced by a GC since the listing
		}
		if err != nil {
			return err
		}
		mu.Lock()
		objects[missing[i]] = packs
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	ix := buildIndex(objects)
	s.idxMu.Lock()
	s.idx = ix
	s.idxMu.Unlock()
	return ix, nil
}

// readIndexObject reads, bounds-checks and decodes one index object.
func (s *Store) readIndexObject(ctx context.Context, key string) ([]*packInfo, error) {
	obj, err := getInto(ctx, s.t, key, nil, maxObject(maxIndexPayload))
	if err != nil {
		return nil, err
	}
	payload, err := s.codec.decode(nil, kindIndex, obj, aadFor(key))
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", key, err)
	}
	return parsePacks("index "+key, payload)
}

// putIndex writes index objects listing packs, at most maxIndexEntries
// records each, and returns their keys.
func (s *Store) putIndex(ctx context.Context, packs []*packInfo) ([]string, error) {
	var keys []string
	for len(packs) > 0 {
		n, entries := 0, 0
		for n < len(packs) && (n == 0 || entries+len(packs[n].entries) <= maxIndexEntries) {
			entries += len(packs[n].entries)
			n++
		}
		key := indexPrefix + randomHex(16)
		obj, err := s.codec.encode(nil, kindIndex, CompressionZstd, appendPacks(nil, packs[:n]), aadFor(key))
		if err != nil {
			return keys, err
		}
		if err := s.t.Put(ctx, key, obj); err != nil {
			return keys, fmt.Errorf("write index: %w", err)
		}
		keys = append(keys, key)
		packs = packs[n:]
	}
	return keys, nil
}

// BlockLocation says where a block's record is stored: the pack object's
// key and the record's byte range in it. It is for operators and tests
// that need to inspect (or damage) one block.
func (s *Store) BlockLocation(ctx context.Context, id BlockID) (key string, off, length int64, err error) {
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return "", 0, 0, err
	}
	loc, ok := ix.blocks[id]
	if !ok {
		return "", 0, 0, fmt.Errorf("%w: block %s is in no index", ErrMissingBlock, id)
	}
	e := loc.entry()
	return packKey(loc.pack.id), e.off, e.size, nil
}
