package backupstore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
)

// Pack sizes. See doc.go, Packs.
const (
	// DefaultPackSize is Options.PackSize's default: a pack is closed once
	// its records reach it.
	DefaultPackSize = 32 << 20
	// packsInFlight bounds the pack buffers of one writer: one filling,
	// the others being uploaded.
	packsInFlight = 3
	// defaultIndexEvery is how many packs a backup uploads before it
	// writes an index object for them (and once more at its end), so a
	// retry of an interrupted backup reuses what was indexed.
	defaultIndexEvery = 64
	// trailerLenSize is the length field after a pack's trailer.
	trailerLenSize = 4
)

// packID names a pack: 16 random bytes.
type packID [16]byte

func (p packID) String() string { return hex.EncodeToString(p[:]) }

func newPackID() packID {
	var p packID
	_, _ = rand.Read(p[:])
	return p
}

func packKey(p packID) string {
	h := p.String()
	return "packs/" + h[:2] + "/" + h
}

// parsePackKey returns the pack a key under packs/ names.
func parsePackKey(key string) (packID, bool) {
	var p packID
	rest, ok := strings.CutPrefix(key, "packs/")
	if !ok || len(rest) != 3+2*len(p) || rest[2] != '/' || rest[:2] != rest[3:5] {
		return p, false
	}
	b, err := hex.DecodeString(rest[3:])
	if err != nil {
		return p, false
	}
	copy(p[:], b)
	return p, true
}

// packEntry is one block record in a pack.
type packEntry struct {
	id    BlockID
	off   int64 // of the record in the pack
	size  int64 // stored record length, envelope included
	plain int64 // plaintext length
}

// packInfo is one pack as an index object or its trailer describes it.
type packInfo struct {
	id      packID
	size    int64       // the pack object's length
	entries []packEntry // by offset
}

// recordBytes is the length of all records in the pack.
func (p *packInfo) recordBytes() int64 {
	var n int64
	for _, e := range p.entries {
		n += e.size
	}
	return n
}

// appendPacks encodes packs as index objects and trailers hold them:
// uvarint count, then per pack its 16-byte id, uvarint size, uvarint
// record count and per record the 32-byte block id and uvarints offset,
// stored length and plaintext length.
func appendPacks(dst []byte, packs []*packInfo) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(packs)))
	for _, p := range packs {
		dst = append(dst, p.id[:]...)
		dst = binary.AppendUvarint(dst, uint64(p.size))
		dst = binary.AppendUvarint(dst, uint64(len(p.entries)))
		for _, e := range p.entries {
			dst = append(dst, e.id[:]...)
			dst = binary.AppendUvarint(dst, uint64(e.off))
			dst = binary.AppendUvarint(dst, uint64(e.size))
			dst = binary.AppendUvarint(dst, uint64(e.plain))
		}
	}
	return dst
}

// packReader decodes appendPacks' output without trusting it: every count
// is checked against the bytes left before anything is allocated from it.
type packReader struct {
	b   []byte
	err error
}

func (r *packReader) uvarint(max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max {
		r.err = fmt.Errorf("bad or out-of-range number at %d bytes from the end", len(r.b))
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *packReader) bytes(dst []byte) {
	if r.err != nil {
		return
	}
	if len(r.b) < len(dst) {
		r.err = fmt.Errorf("truncated")
		return
	}
	copy(dst, r.b)
	r.b = r.b[len(dst):]
}

// parsePacks decodes and validates what appendPacks wrote: records lie
// inside their pack, in offset order, without overlap, each no longer
// than a block of the largest size may be stored in.
func parsePacks(what string, b []byte) ([]*packInfo, error) {
	const minPack, minEntry = 16 + 2, 32 + 3
	r := &packReader{b: b}
	n := r.uvarint(uint64(len(b) / minPack))
	packs := make([]*packInfo, 0, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		p := &packInfo{}
		r.bytes(p.id[:])
		p.size = int64(r.uvarint(maxPackSize + uint64(maxObject(MaxBlockSize)) + uint64(maxObject(maxIndexPayload))))
		m := r.uvarint(uint64(len(r.b) / minEntry))
		p.entries = make([]packEntry, m)
		end := int64(0)
		for k := range p.entries {
			e := &p.entries[k]
			r.bytes(e.id[:])
			e.off = int64(r.uvarint(uint64(p.size)))
			e.size = int64(r.uvarint(uint64(maxObject(MaxBlockSize))))
			e.plain = int64(r.uvarint(MaxBlockSize))
			switch {
			case r.err != nil:
			case e.off < end || e.size < envelopeHeader || e.off+e.size > p.size:
				r.err = fmt.Errorf("pack %s: record %d (%d bytes at %d) overlaps or leaves the pack of %d bytes", p.id, k, e.size, e.off, p.size)
			case e.plain <= 0 || e.id.IsZero():
				r.err = fmt.Errorf("pack %s: record %d: bad block", p.id, k)
			}
			end = e.off + e.size
		}
		packs = append(packs, p)
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, what, r.err)
	}
	return packs, nil
}

// encodeTrailer is the end of a pack: an envelope (kind 'P', bound to the
// pack's key) holding the pack's own record list, then its length.
func (s *Store) encodeTrailer(p *packInfo) ([]byte, error) {
	key := packKey(p.id)
	t, err := s.codec.encode(nil, kindTrailer, CompressionZstd, appendPacks(nil, []*packInfo{p}), aadFor(key))
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint32(t, uint32(len(t))), nil
}

// readTrailer reads the record list at the end of a pack of the given
// size (two range reads), so a pack no index lists can be described.
func (s *Store) readTrailer(ctx context.Context, id packID, size int64) (*packInfo, error) {
	key := packKey(id)
	if size < trailerLenSize+envelopeHeader {
		return nil, fmt.Errorf("%w: pack %s: %d bytes", ErrCorrupt, id, size)
	}
	lb, err := getRange(ctx, s.t, key, size-trailerLenSize, trailerLenSize, nil)
	if err != nil {
		return nil, err
	}
	n := int64(binary.BigEndian.Uint32(lb))
	if n > size-trailerLenSize || n > maxObject(maxIndexPayload) {
		return nil, fmt.Errorf("%w: pack %s: trailer of %d bytes", ErrCorrupt, id, n)
	}
	start := size - trailerLenSize - n
	obj, err := getRange(ctx, s.t, key, start, n, nil)
	if err != nil {
		return nil, err
	}
	payload, err := s.codec.decode(nil, kindTrailer, obj, aadFor(key))
	if err != nil {
		return nil, fmt.Errorf("pack %s trailer: %w", id, err)
	}
	packs, err := parsePacks("pack "+id.String()+" trailer", payload)
	if err != nil {
		return nil, err
	}
	if len(packs) != 1 || packs[0].id != id || packs[0].size != start {
		return nil, fmt.Errorf("%w: pack %s: trailer describes another pack", ErrCorrupt, id)
	}
	packs[0].size = size
	return packs[0], nil
}

// packer collects encoded block records into packs and stores each pack
// once its records reach the target size. Writers call add concurrently;
// at most packsInFlight pack buffers exist (one filling, the others being
// stored), so a slow target slows the writers instead of growing memory.
type packer struct {
	s      *Store
	target int
	free   chan []byte
	// stored is called after each pack is in the target.
	stored func(context.Context, *packInfo) error

	mu      sync.Mutex
	buf     []byte
	entries []packEntry
}

func (s *Store) newPacker(stored func(context.Context, *packInfo) error) *packer {
	p := &packer{s: s, target: s.opts.PackSize, free: make(chan []byte, packsInFlight), stored: stored}
	for range packsInFlight {
		p.free <- nil
	}
	return p
}

// add appends one block's record (copied) to the current pack, and stores
// the pack if that filled it.
func (p *packer) add(ctx context.Context, id BlockID, plain int, rec []byte) error {
	p.mu.Lock()
	if p.entries == nil {
		select {
		case p.buf = <-p.free:
		case <-ctx.Done():
			p.mu.Unlock()
			return context.Cause(ctx)
		}
		if p.buf == nil {
			p.buf = make([]byte, 0, p.target+len(rec)+4096)
		}
		p.buf = p.buf[:0]
	}
	p.entries = append(p.entries, packEntry{id: id, off: int64(len(p.buf)), size: int64(len(rec)), plain: int64(plain)})
	p.buf = append(p.buf, rec...)
	var full []byte
	var entries []packEntry
	if len(p.buf) >= p.target {
		full, entries = p.buf, p.entries
		p.buf, p.entries = nil, nil
	}
	p.mu.Unlock()
	if full == nil {
		return nil
	}
	return p.store(ctx, full, entries)
}

// flush stores the pack being filled, if it holds anything.
func (p *packer) flush(ctx context.Context) error {
	p.mu.Lock()
	full, entries := p.buf, p.entries
	p.buf, p.entries = nil, nil
	p.mu.Unlock()
	if len(entries) == 0 {
		return nil
	}
	return p.store(ctx, full, entries)
}

// store seals a pack with its trailer, puts it, returns its buffer and
// reports it.
func (p *packer) store(ctx context.Context, buf []byte, entries []packEntry) error {
	defer func() { p.free <- buf[:0] }()
	info := &packInfo{id: newPackID(), size: int64(len(buf)), entries: entries}
	trailer, err := p.s.encodeTrailer(info)
	if err != nil {
		return err
	}
	buf = append(buf, trailer...)
	info.size = int64(len(buf))
	if err := p.s.t.Put(ctx, packKey(info.id), buf); err != nil {
		return fmt.Errorf("store pack %s: %w", info.id, err)
	}
	return p.stored(ctx, info)
}
