package backupstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"

	"github.com/cairnstore/cairn/replica"
)

// Held records, per block, what a restore destination holds: the block ids
// of the backup it was last restored to. A DR standby keeps it beside its
// replica so that the next backup is applied incrementally even when the
// backup it holds was deleted from the target meanwhile.
//
// A block whose content is not known (an incremental restore was
// interrupted while writing it) has the id unknownBlock, which matches no
// block of any backup, so the next restore rewrites it.
type Held struct {
	// Backup is the backup the destination holds; "" while Partial.
	Backup    string    `json:"backup"`
	Volume    string    `json:"volume"`
	Size      int64     `json:"size"`
	BlockSize int       `json:"blockSize"`
	Blocks    []BlockID `json:"-"`
}

// unknownBlock marks a block whose content is not known. It is not the
// BLAKE3 of any content one can find.
var unknownBlock = func() BlockID {
	var id BlockID
	for i := range id {
		id[i] = 0xff
	}
	return id
}()

// HeldOf is what a destination holds after a complete restore of m.
func HeldOf(m *Manifest) *Held {
	return &Held{Backup: m.Backup, Volume: m.Volume, Size: m.Size, BlockSize: m.BlockSize, Blocks: append([]BlockID(nil), m.Blocks...)}
}

// Towards is what the destination holds while a restore of m over h runs
// (or after it was interrupted): every block that differs between them is
// unknown.
func (h *Held) Towards(m *Manifest) *Held {
	out := &Held{Volume: h.Volume, Size: h.Size, BlockSize: h.BlockSize, Blocks: append([]BlockID(nil), h.Blocks...)}
	if h.BlockSize != m.BlockSize || h.Size != m.Size {
		for i := range out.Blocks {
			out.Blocks[i] = unknownBlock
		}
		return out
	}
	for i := range out.Blocks {
		if i >= len(m.Blocks) || out.Blocks[i] != m.Blocks[i] {
			out.Blocks[i] = unknownBlock
		}
	}
	return out
}

// manifest is h as the previous manifest of an incremental restore.
func (h *Held) manifest() *Manifest {
	return &Manifest{Volume: h.Volume, Backup: h.Backup, Size: h.Size, BlockSize: h.BlockSize, BlockCount: len(h.Blocks), Blocks: h.Blocks}
}

// MarshalBinary encodes h as: uvarint header length, JSON header, 32 bytes
// per block, CRC32C (Castagnoli) of everything before it.
func (h *Held) MarshalBinary() ([]byte, error) {
	hdr, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	out := binary.AppendUvarint(make([]byte, 0, 14+len(hdr)+32*len(h.Blocks)), uint64(len(hdr)))
	out = append(out, hdr...)
	for _, id := range h.Blocks {
		out = append(out, id[:]...)
	}
	return binary.BigEndian.AppendUint32(out, crc32.Checksum(out, crc32.MakeTable(crc32.Castagnoli))), nil
}

// UnmarshalBinary decodes what MarshalBinary wrote, checking its CRC.
func (h *Held) UnmarshalBinary(b []byte) error {
	if len(b) < 5 {
		return fmt.Errorf("%w: held record too short", ErrCorrupt)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)) != sum {
		return fmt.Errorf("%w: held record checksum mismatch", ErrCorrupt)
	}
	n, k := binary.Uvarint(body)
	if k <= 0 || uint64(len(body)-k) < n {
		return fmt.Errorf("%w: held record header length", ErrCorrupt)
	}
	dec := json.NewDecoder(bytes.NewReader(body[k : k+int(n)]))
	if err := dec.Decode(h); err != nil {
		return fmt.Errorf("%w: held record: %v", ErrCorrupt, err)
	}
	ids := body[k+int(n):]
	if len(ids)%32 != 0 || h.BlockSize <= 0 || len(ids)/32 != blockCount(h.Size, h.BlockSize) {
		return fmt.Errorf("%w: held record has %d id bytes for %d bytes in %d-byte blocks", ErrCorrupt, len(ids), h.Size, h.BlockSize)
	}
	h.Blocks = make([]BlockID, len(ids)/32)
	for i := range h.Blocks {
		copy(h.Blocks[i][:], ids[32*i:])
	}
	return nil
}

// ApplyOptions describe an incremental restore into an existing replica.
type ApplyOptions struct {
	Dir    string // the replica's directory
	Volume string
	Backup string // "" means the latest complete backup
	// Held is what the replica holds; only blocks whose ids differ are
	// written, so it need not be a backup still in the target.
	Held *Held
	// Started, if set, is called with what the replica holds while the
	// restore writes (Held.Towards the backup) before anything is
	// written, so the caller can record it durably.
	Started  func(*Held) error
	Progress func(Progress)
}

// ApplyReplica brings a replica restored earlier (opts.Held) to a backup by
// writing only the blocks that differ, and returns what the replica then
// holds. The replica is flushed before it returns.
func (s *Store) ApplyReplica(ctx context.Context, opts ApplyOptions) (RestoreResult, *Held, error) {
	m, err := s.ReadManifest(ctx, opts.Volume, opts.Backup)
	if err != nil {
		return RestoreResult{}, nil, err
	}
	r, err := replica.Open(opts.Dir)
	if err != nil {
		return RestoreResult{}, nil, fmt.Errorf("apply %s/%s: open replica: %w", opts.Volume, m.Backup, err)
	}
	defer r.Close()
	if r.Size() != m.Size {
		return RestoreResult{}, nil, fmt.Errorf("apply %s/%s: %w: replica %d bytes, backup %d", opts.Volume, m.Backup, ErrSizeMismatch, r.Size(), m.Size)
	}
	if opts.Started != nil {
		if err := opts.Started(opts.Held.Towards(m)); err != nil {
			return RestoreResult{}, nil, err
		}
	}
	res, err := s.Restore(ctx, RestoreOptions{Volume: opts.Volume, Backup: m.Backup, Sink: r, held: opts.Held, Progress: opts.Progress})
	if err != nil {
		return res, nil, err
	}
	if err := r.Flush(); err != nil {
		return res, nil, err
	}
	return res, HeldOf(m), nil
}
