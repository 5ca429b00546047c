package backupstore

import "fmt"

// Limits on what the format holds. Every object read from a target is
// checked against them before anything is allocated from its fields, so a
// forged or corrupt object fails with an error instead of exhausting
// memory or disk.
const (
	// MaxManifestBlocks bounds the blocks of one backup (256 MiB of ids;
	// 16 TiB at the default 2 MiB block size).
	MaxManifestBlocks = 1 << 23
	// maxManifestHeader bounds a manifest's JSON header (labels included).
	maxManifestHeader = 1 << 20
	// maxManifestPayload bounds a manifest's plaintext.
	maxManifestPayload = binaryUvarintLen + maxManifestHeader + 32*MaxManifestBlocks
	// maxCataloguePayload bounds a catalogue's plaintext (about 100 000
	// backups of one volume).
	maxCataloguePayload = 64 << 20
	// maxIndexPayload bounds the plaintext of an index object or a pack
	// trailer (about 2.5 million records).
	maxIndexPayload = 128 << 20
	// maxIndexEntries is how many records one index object lists at most
	// (GC splits a consolidated index into objects of this many).
	maxIndexEntries = 1 << 20
	// maxPackSize bounds Options.PackSize and the size of a pack an index
	// may describe.
	maxPackSize = 1 << 30
	// maxSmallObject bounds cairn-target.json and lock objects.
	maxSmallObject = 1 << 20

	binaryUvarintLen = 10
	// envelopeOverhead is what an envelope adds to its compressed body:
	// header, nonce and GCM tag.
	envelopeOverhead = envelopeHeader + gcmNonceSize + 16
)

// maxPayload is the largest plaintext an object of kind may hold.
func maxPayload(kind byte) int64 {
	switch kind {
	case kindBlock:
		return MaxBlockSize
	case kindManifest:
		return maxManifestPayload
	case kindCatalogue:
		return maxCataloguePayload
	case kindIndex, kindTrailer:
		return maxIndexPayload
	}
	return 0
}

// maxObject is the largest stored object holding at most plain payload
// bytes: the worst compression bound plus the envelope.
func maxObject(plain int64) int64 {
	n := int(plain)
	return int64(max(compressBound(CompressionZstd, n), compressBound(CompressionLZ4, n), n)) + envelopeOverhead
}

// checkBlockSize enforces the documented block sizes: a multiple of 4 KiB
// from 4 KiB to 64 MiB.
func checkBlockSize(bs int64) error {
	if bs < MinBlockSize || bs > MaxBlockSize || bs%MinBlockSize != 0 {
		return fmt.Errorf("block size %d: want a multiple of %d between %d and %d", bs, MinBlockSize, MinBlockSize, MaxBlockSize)
	}
	return nil
}

// checkGeometry checks a volume size, block size and block count against
// their bounds and each other.
func checkGeometry(size, bs int64, count int) error {
	if err := checkBlockSize(bs); err != nil {
		return err
	}
	if count <= 0 || count > MaxManifestBlocks {
		return fmt.Errorf("block count %d: want 1 to %d", count, MaxManifestBlocks)
	}
	if size <= 0 || size > int64(count)*bs || size <= int64(count-1)*bs {
		return fmt.Errorf("size %d does not fill %d blocks of %d bytes", size, count, bs)
	}
	return nil
}

// validate checks a decoded manifest header read from key: its fields
// against their bounds, the ids' length against the block count, and its
// names against the backup it was read for.
func (m *Manifest) validate(key, volume, backup, blockIDHash string, idBytes int) error {
	if m.Volume != volume || m.Backup != backup {
		return fmt.Errorf("%w: manifest %s names %s/%s", ErrCorrupt, key, m.Volume, m.Backup)
	}
	if err := checkGeometry(m.Size, int64(m.BlockSize), m.BlockCount); err != nil {
		return fmt.Errorf("%w: manifest %s: %v", ErrCorrupt, key, err)
	}
	if int64(idBytes) != 32*int64(m.BlockCount) {
		return fmt.Errorf("%w: manifest %s: %d bytes of block ids for %d blocks", ErrCorrupt, key, idBytes, m.BlockCount)
	}
	if m.BlockIDHash != blockIDHash {
		return fmt.Errorf("%w: manifest %s: block id hash %q, the target uses %q", ErrCorrupt, key, m.BlockIDHash, blockIDHash)
	}
	return nil
}

// validate checks a decoded catalogue read for volume: every entry well
// formed and listed once.
func (c *catalogue) validate(key, volume string) error {
	if c.Volume != volume {
		return fmt.Errorf("%w: catalogue %s names volume %q", ErrCorrupt, key, c.Volume)
	}
	seen := make(map[string]bool, len(c.Backups))
	for _, b := range c.Backups {
		if err := b.validate(volume); err != nil {
			return fmt.Errorf("%w: catalogue %s: %v", ErrCorrupt, key, err)
		}
		if seen[b.ID] {
			return fmt.Errorf("%w: catalogue %s lists backup %s twice", ErrCorrupt, key, b.ID)
		}
		seen[b.ID] = true
	}
	return nil
}

// validate checks one catalogue entry.
func (b *BackupInfo) validate(volume string) error {
	if err := validName("backup", b.ID); err != nil {
		return err
	}
	if b.Volume != volume {
		return fmt.Errorf("backup %s names volume %q", b.ID, b.Volume)
	}
	if err := checkGeometry(b.Size, int64(b.BlockSize), b.Blocks); err != nil {
		return fmt.Errorf("backup %s: %v", b.ID, err)
	}
	if b.ZeroBlocks < 0 || b.ZeroBlocks > b.Blocks {
		return fmt.Errorf("backup %s: %d zero blocks of %d", b.ID, b.ZeroBlocks, b.Blocks)
	}
	return nil
}

// checkAgrees reports whether a catalogue entry and its manifest describe
// the same backup.
func checkAgrees(b BackupInfo, m *Manifest) error {
	zeros := 0
	for _, id := range m.Blocks {
		if id.IsZero() {
			zeros++
		}
	}
	switch {
	case b.Size != m.Size, b.BlockSize != m.BlockSize, b.Blocks != m.BlockCount:
		return fmt.Errorf("%w: backup %s/%s: catalogue says %d bytes in %d blocks of %d, manifest %d bytes in %d blocks of %d",
			ErrInconsistent, b.Volume, b.ID, b.Size, b.Blocks, b.BlockSize, m.Size, m.BlockCount, m.BlockSize)
	case b.ZeroBlocks != zeros:
		return fmt.Errorf("%w: backup %s/%s: catalogue says %d zero blocks, manifest has %d", ErrInconsistent, b.Volume, b.ID, b.ZeroBlocks, zeros)
	case b.Snapshot != m.Snapshot || b.Parent != m.Parent || !b.Created.Equal(m.Created):
		return fmt.Errorf("%w: backup %s/%s: catalogue and manifest disagree on snapshot, parent or creation time", ErrInconsistent, b.Volume, b.ID)
	}
	return nil
}
