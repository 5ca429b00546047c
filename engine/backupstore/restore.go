package backupstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
)

// Sink is what a restore writes: a new replica, a raw file, a block device.
type Sink interface {
	WriteAt(p []byte, off int64) (int, error)
}

// Trimmer is implemented by sinks that can discard a range so it reads as
// zeros (punch a hole, unmap). Restore uses it for all-zero blocks.
type Trimmer interface {
	Trim(off, length int64) error
}

// Preallocator is implemented by sinks that can reserve space for a range
// before it is written (fallocate). Restore preallocates the ranges it is
// about to write: on ext4 and xfs that makes the writes several times
// cheaper than filling holes, and keeps the result sparse elsewhere.
type Preallocator interface {
	Preallocate(off, length int64) error
}

// RestoreOptions describe one restore.
type RestoreOptions struct {
	Volume string
	Backup string // "" means the latest complete backup
	Sink   Sink
	// SinkZeroed says the sink reads as zeros wherever nothing is written
	// (a freshly created sparse file or replica): all-zero blocks are then
	// skipped instead of written or trimmed.
	SinkZeroed bool
	// Since is the backup the sink already holds (incremental restore, as
	// DR standby volumes do): only blocks that differ are written. If
	// Since is no longer in the target the restore is full.
	Since string
	// Progress, if set, is called as blocks complete.
	Progress func(Progress)

	// held, set by ApplyReplica, is what the sink holds, kept by the
	// caller (it takes the place of Since).
	held *Held
}

// RestoreResult summarises a restore.
type RestoreResult struct {
	Backup BackupInfo
	// Incremental is true when only blocks differing from Since were written.
	Incremental   bool
	BlocksWritten int
	BlocksZeroed  int
	// BytesWritten counts the bytes of the blocks written or zeroed.
	BytesWritten int64
	// BytesFetched is what the range reads of packs fetched, and
	// ObjectsFetched how many range reads (requests) that took.
	BytesFetched   int64
	ObjectsFetched int
}

// Restore writes a backup into a sink. The catalogue entry and manifest are
// validated and checked against each other before anything is written;
// every block is verified against its content address; a missing or
// corrupt block fails the restore with an error naming the block and the
// backup.
func (s *Store) Restore(ctx context.Context, opts RestoreOptions) (RestoreResult, error) {
	var res RestoreResult
	if opts.Sink == nil {
		return res, errors.New("backupstore: restore needs a sink")
	}
	if err := validName("volume", opts.Volume); err != nil {
		return res, err
	}
	l, ctx, err := s.acquire(ctx, scopeBlocks, false, "restore "+opts.Volume+"/"+opts.Backup, s.opts.LockWait)
	if err != nil {
		return res, err
	}
	defer l.release()

	info, m, err := s.load(ctx, opts.Volume, opts.Backup)
	if err != nil {
		return res, err
	}
	res.Backup = info
	if opts.Since == info.ID || (opts.held != nil && opts.held.Backup == info.ID) {
		res.Incremental = true
		return res, nil // the sink already holds it
	}
	prev, err := s.sinceManifest(ctx, opts.Volume, opts.Since, m)
	if err != nil {
		return res, fmt.Errorf("restore %s/%s: previous backup %s: %w", opts.Volume, info.ID, opts.Since, err)
	}
	if opts.held != nil && opts.held.BlockSize == m.BlockSize {
		prev = opts.held.manifest()
	}
	err = s.restoreBlocks(ctx, opts, m, prev, &res)
	if cause := context.Cause(ctx); err != nil && cause != nil && errors.Is(cause, ErrLockLost) {
		err = cause
	}
	if err != nil {
		return res, fmt.Errorf("restore %s/%s: %w", opts.Volume, info.ID, err)
	}
	return res, nil
}

// restoreBlocks loads the index and writes the blocks of m that differ from
// prev. A read-only store holds no lock, so a GC may repack or remove packs
// between its reading the index and the packs: a block then missing is
// tried once more with the index read again (writing a block twice
// leaves the same content).
func (s *Store) restoreBlocks(ctx context.Context, opts RestoreOptions, m, prev *Manifest, res *RestoreResult) error {
	for attempt := 0; ; attempt++ {
		*res = RestoreResult{Backup: res.Backup, Incremental: prev != nil}
		r := &restoreRun{s: s, opts: opts, m: m, res: res}
		r.plan(prev)
		var err error
		if r.ix, err = s.loadIndex(ctx); err != nil {
			return err
		}
		err = r.run(ctx)
		if err != nil && attempt == 0 && s.opts.ReadOnly && errors.Is(err, ErrMissingBlock) {
			continue
		}
		return err
	}
}

// sinceManifest returns the manifest of the backup an incremental restore
// starts from, or nil when there is none, it is gone, or its block size
// differs from m's (then the restore is full).
func (s *Store) sinceManifest(ctx context.Context, volume, since string, m *Manifest) (*Manifest, error) {
	if since == "" {
		return nil, nil
	}
	_, prev, err := s.load(ctx, volume, since)
	switch {
	case errors.Is(err, ErrBackupNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	case prev.BlockSize != m.BlockSize:
		return nil, nil
	}
	return prev, nil
}

// restoreRun is one restore's plan and state.
type restoreRun struct {
	s     *Store
	opts  RestoreOptions
	m     *Manifest
	res   *RestoreResult
	ix    *index
	fresh bool              // the sink reads as zeros: write only non-zero pages
	want  map[BlockID][]int // distinct blocks to fetch and where they go
	zeros []int             // zero blocks to trim or write
	pr    *progressReporter

	mu, wmu sync.Mutex
}

// plan decides which blocks to write (those differing from prev, if any)
// and which to zero, and sets up progress.
func (r *restoreRun) plan(prev *Manifest) {
	m := r.m
	r.fresh = r.opts.SinkZeroed && prev == nil
	r.want = map[BlockID][]int{}
	var total int64
	nblocks := 0
	for i, id := range m.Blocks {
		if prev != nil && i < prev.BlockCount && prev.Blocks[i] == id &&
			blockLen(prev.Size, prev.BlockSize, i) == blockLen(m.Size, m.BlockSize, i) {
			continue
		}
		switch {
		case id.IsZero() && r.fresh:
			continue
		case id.IsZero():
			r.zeros = append(r.zeros, i)
		default:
			r.want[id] = append(r.want[id], i)
		}
		total += int64(blockLen(m.Size, m.BlockSize, i))
		nblocks++
	}
	r.pr = newProgressReporter("restore", total, nblocks, r.opts.Progress)
}

// run checks every block to fetch is indexed, then zeroes, preallocates,
// fetches and writes.
func (r *restoreRun) run(ctx context.Context) error {
	for id := range r.want {
		if _, ok := r.ix.blocks[id]; !ok {
			return fmt.Errorf("%w: block %s (in no index)", ErrMissingBlock, id)
		}
	}
	if err := r.writeZeros(); err != nil {
		return err
	}
	r.preallocate()
	if err := r.writeBlocks(ctx); err != nil {
		return err
	}
	r.pr.finish()
	return nil
}

// writeZeros trims the zero blocks where the sink can, else writes zeros.
func (r *restoreRun) writeZeros() error {
	trim, _ := r.opts.Sink.(Trimmer)
	var zbuf []byte
	for _, i := range r.zeros {
		n := blockLen(r.m.Size, r.m.BlockSize, i)
		off := int64(i) * int64(r.m.BlockSize)
		var err error
		if trim != nil {
			err = trim.Trim(off, int64(n))
		} else {
			if zbuf == nil {
				zbuf = make([]byte, r.m.BlockSize)
			}
			_, err = r.opts.Sink.WriteAt(zbuf[:n], off)
		}
		if err != nil {
			return fmt.Errorf("zero block %d: %w", i, err)
		}
		r.pr.add(int64(n), 1, 0)
		r.res.BytesWritten += int64(n)
	}
	r.res.BlocksZeroed = len(r.zeros)
	return nil
}

// preallocate reserves the ranges about to be written, one call per
// contiguous range: fallocate makes the writes far cheaper than filling
// holes. Best effort: a sink without fallocate is just written.
func (r *restoreRun) preallocate() {
	pa, ok := r.opts.Sink.(Preallocator)
	if !ok {
		return
	}
	var writes []int
	for _, idx := range r.want {
		writes = append(writes, idx...)
	}
	for _, e := range blockExtents(writes, r.m.Size, r.m.BlockSize) {
		if pa.Preallocate(e.Offset, e.Length) != nil {
			return
		}
	}
}

// writeAt writes one block's data: on a fresh sink only its non-zero
// pages, on others the whole block, since it must overwrite what was there.
func (r *restoreRun) writeAt(data []byte, off int64) error {
	if !r.fresh {
		_, err := r.opts.Sink.WriteAt(data, off)
		return err
	}
	for _, e := range nonZeroRuns(data, 4096) {
		if _, err := r.opts.Sink.WriteAt(data[e.Offset:e.Offset+e.Length], off+e.Offset); err != nil {
			return err
		}
	}
	return nil
}

// writeBlocks fetches each distinct block once, with range reads of the
// packs that hold them, in volume order (sequential writes,
// readahead-friendly), and writes it everywhere it is used.
func (r *restoreRun) writeBlocks(ctx context.Context) error {
	ids := make([]BlockID, 0, len(r.want))
	first := make(map[BlockID]int, len(r.want))
	for id, idx := range r.want {
		ids = append(ids, id)
		first[id] = slices.Min(idx)
	}
	sort.Slice(ids, func(i, j int) bool { return first[ids[i]] < first[ids[j]] })
	reads := make([]blockRead, len(ids))
	for k, id := range ids {
		reads[k] = blockRead{id: id, loc: r.ix.blocks[id]}
	}
	n, fetched, err := r.s.readBlocks(ctx, reads, r.m.BlockSize, false, func(k int, _, data []byte, stored int, err error) error {
		if err != nil {
			return err
		}
		return r.place(ids[k], data, stored)
	})
	r.res.ObjectsFetched, r.res.BytesFetched = n, fetched
	return err
}

// place writes one fetched block at every index that uses it.
func (r *restoreRun) place(id BlockID, data []byte, stored int) error {
	m := r.m
	for _, i := range r.want[id] {
		n := blockLen(m.Size, m.BlockSize, i)
		if len(data) != n {
			return fmt.Errorf("%w: block %s is %d bytes, backup %s/%s needs %d at block %d",
				ErrCorrupt, id, len(data), m.Volume, m.Backup, n, i)
		}
		// One writer at a time: the kernel serialises writes to one file
		// anyway, and waiting here sleeps instead of spinning.
		r.wmu.Lock()
		err := r.writeAt(data, int64(i)*int64(m.BlockSize))
		r.wmu.Unlock()
		if err != nil {
			return fmt.Errorf("write block %d: %w", i, err)
		}
		r.pr.add(int64(n), 1, 0)
		r.mu.Lock()
		r.res.BytesWritten += int64(n)
		r.mu.Unlock()
	}
	r.mu.Lock()
	r.res.BlocksWritten += len(r.want[id])
	r.mu.Unlock()
	r.pr.add(0, 0, int64(stored))
	return nil
}

// blockExtents merges block indexes into byte extents.
func blockExtents(blocks []int, size int64, bs int) []Extent {
	slices.Sort(blocks)
	var out []Extent
	for _, i := range blocks {
		off, n := int64(i)*int64(bs), int64(blockLen(size, bs, i))
		if k := len(out) - 1; k >= 0 && out[k].Offset+out[k].Length >= off {
			if end := off + n; end > out[k].Offset+out[k].Length {
				out[k].Length = end - out[k].Offset
			}
			continue
		}
		out = append(out, Extent{Offset: off, Length: n})
	}
	return out
}

// nonZeroRuns returns the byte ranges of p that are not all zero, at page
// granularity.
func nonZeroRuns(p []byte, page int) []Extent {
	var out []Extent
	for off := 0; off < len(p); off += page {
		n := min(page, len(p)-off)
		if isZero(p[off : off+n]) {
			continue
		}
		if k := len(out) - 1; k >= 0 && out[k].Offset+out[k].Length == int64(off) {
			out[k].Length += int64(n)
			continue
		}
		out = append(out, Extent{Offset: int64(off), Length: int64(n)})
	}
	return out
}
