package backupstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Source is what a backup reads: a point-in-time image of a volume (a
// replica snapshot, a raw file).
type Source interface {
	Size() int64
	ReadAt(p []byte, off int64) (int, error)
}

// Extent is a byte range of a volume.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// Progress reports an operation's advance. Bytes count volume bytes
// processed (skipped unchanged blocks count as done).
type Progress struct {
	Op          string // "backup", "restore", "verify"
	BytesDone   int64
	BytesTotal  int64
	BlocksDone  int
	BlocksTotal int
	// TransferredBytes is what went over the wire (stored sizes).
	TransferredBytes int64
}

// BackupOptions describe one backup.
type BackupOptions struct {
	// Volume names the volume in the target.
	Volume string
	// Snapshot names the source snapshot; it is recorded so the next
	// backup can ask the replica for the diff since it.
	Snapshot string
	Source   Source
	// Base is the backup the Changed extents are relative to and whose
	// blocks are reused without reading. "" means the volume's latest
	// complete backup; NoBase means none (a full backup, which still
	// deduplicates against every block in the target).
	Base   string
	NoBase bool
	// Changed lists the only ranges that differ from Base (or, with no
	// base, the only allocated ranges; the rest reads as zeros), e.g. from
	// a replica diff. nil means unknown: every block is read and hashed,
	// and only blocks whose hash is not in Base or the target are
	// uploaded.
	Changed []Extent
	// BlockSize (default 2 MiB) and Compression (default zstd) apply to
	// this backup's new blocks.
	BlockSize   int
	Compression *Compression
	Labels      map[string]string
	// Progress, if set, is called (serially, at most every 100ms and at
	// the end) as blocks complete.
	Progress func(Progress)
}

// CreateBackup stores a new backup of a volume and returns its catalogue
// entry. The backup is listed only after all of its blocks and its manifest
// are stored; a failure at any point leaves no complete-looking backup
// behind (blocks in packs already stored and indexed are reused by a retry;
// GC collects what stays unreferenced).
func (s *Store) CreateBackup(ctx context.Context, opts BackupOptions) (BackupInfo, error) {
	if err := s.checkWritable(); err != nil {
		return BackupInfo{}, err
	}
	if err := validName("volume", opts.Volume); err != nil {
		return BackupInfo{}, err
	}
	if opts.Source == nil {
		return BackupInfo{}, errors.New("backupstore: backup needs a source")
	}
	bs := opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if err := checkBlockSize(int64(bs)); err != nil {
		return BackupInfo{}, fmt.Errorf("backupstore: %w", err)
	}
	comp := CompressionZstd
	if opts.Compression != nil {
		comp = *opts.Compression
	}
	size := opts.Source.Size()
	if size <= 0 {
		return BackupInfo{}, fmt.Errorf("backupstore: source of %s has size %d", opts.Volume, size)
	}
	if n := (size + int64(bs) - 1) / int64(bs); n > MaxManifestBlocks {
		return BackupInfo{}, fmt.Errorf("backupstore: %s: %d blocks of %d bytes, more than a backup may hold (%d): use a larger block size", opts.Volume, n, bs, MaxManifestBlocks)
	}
	started := time.Now().UTC()
	id := newBackupID(started)

	// Hold the block set shared for the whole backup: GC cannot remove a
	// block this backup found present and skipped.
	l, ctx, err := s.acquire(ctx, scopeBlocks, false, "backup "+opts.Volume+"/"+id, s.opts.LockWait)
	if err != nil {
		return BackupInfo{}, err
	}
	defer l.release()

	// The base is read after the lock is held, so its blocks cannot vanish.
	var base *Manifest
	if !opts.NoBase {
		var info BackupInfo
		if opts.Base == "" {
			info, err = s.Latest(ctx, opts.Volume)
		} else {
			info, err = s.Get(ctx, opts.Volume, opts.Base)
		}
		switch {
		case err == nil:
			if base, err = s.checkedManifest(ctx, info); err != nil {
				return BackupInfo{}, fmt.Errorf("backupstore: base backup %s/%s: %w", opts.Volume, info.ID, err)
			}
		case errors.Is(err, ErrBackupNotFound) && opts.Base == "":
			// First backup of the volume.
		default:
			return BackupInfo{}, err
		}
	}
	changed := opts.Changed
	if base != nil && base.BlockSize != bs {
		// Ids of another block size cannot be reused: hash everything.
		base, changed = nil, nil
	}

	m := &Manifest{FormatVersion: FormatVersion, Volume: opts.Volume, Backup: id, Snapshot: opts.Snapshot,
		Created: started, Size: size, BlockSize: bs, BlockCount: blockCount(size, bs),
		BlockIDHash: s.cfg.BlockIDHash, Labels: opts.Labels}
	if base != nil {
		m.Parent = base.Backup
	}
	m.Blocks = make([]BlockID, m.BlockCount)

	// Decide per block: read it, or take it from the base (or zero).
	baseID := func(i int) (BlockID, bool) {
		if base == nil {
			return BlockID{}, true // no base: unchanged means never written, zero
		}
		if i >= base.BlockCount || blockLen(base.Size, bs, i) != blockLen(size, bs, i) {
			return BlockID{}, false
		}
		return base.Blocks[i], true
	}
	var toRead []int
	if changed == nil {
		toRead = make([]int, m.BlockCount)
		for i := range toRead {
			toRead[i] = i
		}
	} else {
		dirty := dirtyBlocks(changed, size, bs)
		for i := 0; i < m.BlockCount; i++ {
			if id, ok := baseID(i); ok && !dirty[i] {
				m.Blocks[i] = id
				continue
			}
			toRead = append(toRead, i)
		}
	}
	var baseSet map[BlockID]struct{}
	if base != nil {
		baseSet = make(map[BlockID]struct{}, base.BlockCount)
		for _, id := range base.Blocks {
			baseSet[id] = struct{}{}
		}
	}

	ix, err := s.loadIndex(ctx)
	if err != nil {
		return BackupInfo{}, fmt.Errorf("backup %s/%s: %w", opts.Volume, id, err)
	}
	st := &backupRun{s: s, l: l, m: m, comp: comp, baseSet: baseSet, ix: ix, known: map[BlockID]bool{}}
	st.packs = s.newPacker(st.packStored)
	st.progress = newProgressReporter("backup", size, m.BlockCount, opts.Progress)
	st.progress.add(int64(m.BlockCount-len(toRead))*int64(bs), m.BlockCount-len(toRead), 0)
	if err := st.run(ctx, opts.Source, toRead); err != nil {
		if cause := context.Cause(ctx); cause != nil && errors.Is(cause, ErrLockLost) {
			err = cause
		}
		return BackupInfo{}, fmt.Errorf("backup %s/%s: %w", opts.Volume, id, err)
	}
	st.progress.finish()

	info := BackupInfo{ID: id, Volume: opts.Volume, Snapshot: opts.Snapshot, Parent: m.Parent, Created: started,
		Size: size, BlockSize: bs, Compression: comp.String(), Labels: opts.Labels, Blocks: m.BlockCount,
		ReadBytes: st.readBytes.Load(), NewBlocks: int(st.newBlocks.Load()), NewBytes: st.newBytes.Load()}
	for _, b := range m.Blocks {
		if b.IsZero() {
			info.ZeroBlocks++
		}
	}
	if err := s.commit(ctx, l, m, &info); err != nil {
		return BackupInfo{}, fmt.Errorf("backup %s/%s: %w", opts.Volume, id, err)
	}
	return info, nil
}

// commit makes a backup visible: under the volume lock, the manifest
// (recording the generation of the catalogue that will list it), then the
// catalogue entry. Both only while the block-set lock l certainly still
// protects the blocks the backup skipped.
func (s *Store) commit(ctx context.Context, l *lock, m *Manifest, info *BackupInfo) error {
	if err := l.valid(); err != nil {
		return err
	}
	return s.updateCatalogue(ctx, m.Volume, "backup "+m.Volume+"/"+m.Backup, func(ctx context.Context, c *catalogue) error {
		if err := l.valid(); err != nil {
			return err
		}
		m.Generation = c.Generation + 1
		if err := s.putManifest(ctx, m); err != nil {
			return fmt.Errorf("write manifest: %w", err)
		}
		info.Completed = time.Now().UTC()
		c.Backups = append(c.Backups, *info)
		return nil
	})
}

// dirtyBlocks marks the blocks that overlap any extent.
func dirtyBlocks(ext []Extent, size int64, bs int) []bool {
	n := blockCount(size, bs)
	dirty := make([]bool, n)
	for _, e := range ext {
		if e.Length <= 0 || e.Offset >= size {
			continue
		}
		first := e.Offset / int64(bs)
		last := min((e.Offset+e.Length-1)/int64(bs), int64(n-1))
		for i := max(first, 0); i <= last; i++ {
			dirty[i] = true
		}
	}
	return dirty
}

// backupRun is the state of one backup's block pipeline.
type backupRun struct {
	s        *Store
	l        *lock
	m        *Manifest
	comp     Compression
	baseSet  map[BlockID]struct{}
	ix       *index // the target's blocks when the run started
	packs    *packer
	progress *progressReporter

	mu      sync.Mutex
	known   map[BlockID]bool // blocks this run found present or stored
	pending []*packInfo      // stored packs no index object lists yet

	readBytes atomic.Int64
	newBlocks atomic.Int64
	newBytes  atomic.Int64
}

// run reads, hashes, compresses and encrypts the given blocks with
// Concurrency workers, each owning one read buffer and one record buffer,
// and packs the new ones; then it stores the last pack and indexes every
// pack it stored. Memory stays at about 2 * Concurrency * BlockSize plus
// packsInFlight packs whatever the volume size.
func (r *backupRun) run(ctx context.Context, src Source, blocks []int) error {
	err := parallelWorkers(ctx, r.s.opts.Concurrency, len(blocks), func() func(context.Context, int) error {
		buf := make([]byte, r.m.BlockSize)
		var obj []byte
		return func(ctx context.Context, k int) error {
			var err error
			obj, err = r.one(ctx, src, blocks[k], buf, obj)
			return err
		}
	})
	if err != nil {
		return err
	}
	if err := r.packs.flush(ctx); err != nil {
		return err
	}
	return r.flushIndex(ctx, 1)
}

func (r *backupRun) one(ctx context.Context, src Source, i int, buf, obj []byte) ([]byte, error) {
	n := blockLen(r.m.Size, r.m.BlockSize, i)
	p := buf[:n]
	off := int64(i) * int64(r.m.BlockSize)
	got, err := src.ReadAt(p, off)
	if got == n && errors.Is(err, io.EOF) {
		err = nil
	}
	if err != nil {
		return obj, fmt.Errorf("read source at %d: %w", off, err)
	}
	r.readBytes.Add(int64(n))
	id := r.s.codec.blockID(p)
	r.m.Blocks[i] = id
	var sent int64
	if !id.IsZero() {
		if sent, obj, err = r.store(ctx, id, p, obj); err != nil {
			return obj, fmt.Errorf("block %d (%s): %w", i, id, err)
		}
	}
	r.progress.add(int64(n), 1, sent)
	return obj, nil
}

// store packs a block unless the base, the target's index or this run
// already has it.
func (r *backupRun) store(ctx context.Context, id BlockID, p, obj []byte) (int64, []byte, error) {
	if _, ok := r.baseSet[id]; ok {
		return 0, obj, nil
	}
	if _, ok := r.ix.blocks[id]; ok {
		return 0, obj, nil
	}
	r.mu.Lock()
	seen := r.known[id]
	r.known[id] = true
	r.mu.Unlock()
	if seen {
		return 0, obj, nil
	}
	obj, err := r.s.codec.encode(obj[:0], kindBlock, r.comp, p, id[:])
	if err != nil {
		return 0, obj, err
	}
	if err := r.packs.add(ctx, id, len(p), obj); err != nil {
		return 0, obj, err
	}
	sent := int64(len(obj))
	r.newBlocks.Add(1)
	r.newBytes.Add(sent)
	return sent, obj, nil
}

// packStored notes a stored pack and writes an index object once
// indexEvery packs wait for one.
func (r *backupRun) packStored(ctx context.Context, p *packInfo) error {
	r.mu.Lock()
	r.pending = append(r.pending, p)
	r.mu.Unlock()
	return r.flushIndex(ctx, r.s.opts.indexEvery)
}

// flushIndex writes an index object for the pending packs if there are at
// least atLeast of them, while the block-set lock certainly still holds (a
// GC that found this run's packs unindexed may have removed them
// otherwise).
func (r *backupRun) flushIndex(ctx context.Context, atLeast int) error {
	r.mu.Lock()
	if len(r.pending) < atLeast || len(r.pending) == 0 {
		r.mu.Unlock()
		return nil
	}
	packs := r.pending
	r.pending = nil
	r.mu.Unlock()
	if err := r.l.valid(); err != nil {
		return err
	}
	_, err := r.s.putIndex(ctx, packs)
	return err
}

// progressReporter serialises and throttles progress callbacks.
type progressReporter struct {
	fn       func(Progress)
	mu       sync.Mutex
	p        Progress
	last     time.Time
	interval time.Duration
}

func newProgressReporter(op string, total int64, blocks int, fn func(Progress)) *progressReporter {
	return &progressReporter{fn: fn, p: Progress{Op: op, BytesTotal: total, BlocksTotal: blocks}, interval: 100 * time.Millisecond}
}

func (r *progressReporter) add(bytes int64, blocks int, transferred int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.BytesDone = min(r.p.BytesDone+bytes, r.p.BytesTotal)
	r.p.BlocksDone += blocks
	r.p.TransferredBytes += transferred
	if r.fn != nil && time.Since(r.last) >= r.interval {
		r.last = time.Now()
		r.fn(r.p)
	}
}

func (r *progressReporter) finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.BytesDone = r.p.BytesTotal
	r.p.BlocksDone = r.p.BlocksTotal
	if r.fn != nil {
		r.fn(r.p)
	}
}

func sortedKeys[M ~map[K]V, K ~string, V any](m M) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
