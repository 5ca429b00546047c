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
}

// RestoreResult summarises a restore.
type RestoreResult struct {
	Backup BackupInfo
	// Incremental is true when only blocks differing from Since were written.
	Incremental    bool
	BlocksWritten  int
	BlocksZeroed   int
	BytesFetched   int64
	ObjectsFetched int
}

// Restore writes a backup into a sink. Every block is verified against its
// content address; a missing or corrupt block fails the restore with an
// error naming the block and the backup.
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

	var info BackupInfo
	if opts.Backup == "" {
		info, err = s.Latest(ctx, opts.Volume)
	} else {
		info, err = s.Get(ctx, opts.Volume, opts.Backup)
	}
	if err != nil {
		return res, err
	}
	res.Backup = info
	m, err := s.readManifest(ctx, opts.Volume, info.ID)
	if err != nil {
		return res, err
	}
	var prev *Manifest
	if opts.Since != "" && opts.Since != info.ID {
		if _, err := s.Get(ctx, opts.Volume, opts.Since); err == nil {
			if prev, err = s.readManifest(ctx, opts.Volume, opts.Since); err != nil {
				return res, fmt.Errorf("restore %s/%s: previous backup %s: %w", opts.Volume, info.ID, opts.Since, err)
			}
			if prev.BlockSize != m.BlockSize {
				prev = nil
			}
		} else if !errors.Is(err, ErrBackupNotFound) {
			return res, err
		}
	}
	if opts.Since == info.ID {
		res.Incremental = true
		return res, nil // the sink already holds it
	}
	res.Incremental = prev != nil

	// Group the blocks to write by id: each distinct block is fetched once.
	want := map[BlockID][]int{}
	var zeros []int
	for i, id := range m.Blocks {
		if prev != nil && i < prev.BlockCount && prev.Blocks[i] == id &&
			blockLen(prev.Size, prev.BlockSize, i) == blockLen(m.Size, m.BlockSize, i) {
			continue
		}
		if id.IsZero() {
			if prev != nil || !opts.SinkZeroed {
				zeros = append(zeros, i)
			}
			continue
		}
		want[id] = append(want[id], i)
	}
	total := int64(0)
	for _, idx := range want {
		for _, i := range idx {
			total += int64(blockLen(m.Size, m.BlockSize, i))
		}
	}
	for _, i := range zeros {
		total += int64(blockLen(m.Size, m.BlockSize, i))
	}
	nblocks := len(zeros)
	for _, idx := range want {
		nblocks += len(idx)
	}
	pr := newProgressReporter("restore", total, nblocks, opts.Progress)

	// Zero blocks: trim where the sink can, else write zeros.
	if len(zeros) > 0 {
		trim, _ := opts.Sink.(Trimmer)
		var zbuf []byte
		for _, i := range zeros {
			n := blockLen(m.Size, m.BlockSize, i)
			off := int64(i) * int64(m.BlockSize)
			if trim != nil {
				err = trim.Trim(off, int64(n))
			} else {
				if zbuf == nil {
					zbuf = make([]byte, m.BlockSize)
				}
				_, err = opts.Sink.WriteAt(zbuf[:n], off)
			}
			if err != nil {
				return res, fmt.Errorf("restore %s/%s: zero block %d: %w", opts.Volume, info.ID, i, err)
			}
			pr.add(int64(n), 1, 0)
		}
		res.BlocksZeroed = len(zeros)
	}

	ids := make([]BlockID, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	// Preallocate the blocks about to be written, one call per contiguous
	// range: fallocate makes the writes far cheaper than filling holes. On
	// a fresh (zeroed) sink only the non-zero pages of each block are then
	// written; other sinks get whole blocks, since they must overwrite what
	// was there.
	fresh := opts.SinkZeroed && prev == nil
	if pa, ok := opts.Sink.(Preallocator); ok {
		var writes []int
		for _, idx := range want {
			writes = append(writes, idx...)
		}
		for _, e := range blockExtents(writes, m.Size, m.BlockSize) {
			if pa.Preallocate(e.Offset, e.Length) != nil {
				break // best effort: no fallocate here, just write
			}
		}
	}
	writeAt := func(data []byte, off int64) error {
		if !fresh {
			_, err := opts.Sink.WriteAt(data, off)
			return err
		}
		for _, r := range nonZeroRuns(data, 4096) {
			if _, err := opts.Sink.WriteAt(data[r.Offset:r.Offset+r.Length], off+r.Offset); err != nil {
				return err
			}
		}
		return nil
	}
	// Fetch in volume order: sequential writes, and readahead-friendly.
	first := make(map[BlockID]int, len(want))
	for id, idx := range want {
		first[id] = slices.Min(idx)
	}
	sort.Slice(ids, func(i, j int) bool { return first[ids[i]] < first[ids[j]] })
	var mu, wmu sync.Mutex
	err = s.forEachBlock(ctx, ids, m.BlockSize, func(id BlockID, data []byte, stored int) error {
		for _, i := range want[id] {
			n := blockLen(m.Size, m.BlockSize, i)
			if len(data) != n {
				return fmt.Errorf("%w: block %s is %d bytes, backup %s/%s needs %d at block %d",
					ErrCorrupt, id, len(data), opts.Volume, info.ID, n, i)
			}
			// One writer at a time: the kernel serialises writes to one
			// file anyway, and waiting here sleeps instead of spinning.
			wmu.Lock()
			err := writeAt(data, int64(i)*int64(m.BlockSize))
			wmu.Unlock()
			if err != nil {
				return fmt.Errorf("write block %d: %w", i, err)
			}
			pr.add(int64(n), 1, 0)
		}
		mu.Lock()
		res.BlocksWritten += len(want[id])
		res.ObjectsFetched++
		res.BytesFetched += int64(stored)
		mu.Unlock()
		pr.add(0, 0, int64(stored))
		return nil
	})
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && errors.Is(cause, ErrLockLost) {
			err = cause
		}
		return res, fmt.Errorf("restore %s/%s: %w", opts.Volume, info.ID, err)
	}
	pr.finish()
	return res, nil
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

// forEachBlock fetches, decodes and verifies blocks with bounded
// concurrency and calls fn with each block's plaintext (valid only during
// the call). A missing block fails with ErrMissingBlock, a bad one with
// ErrCorrupt, both naming the block id.
func (s *Store) forEachBlock(ctx context.Context, ids []BlockID, blockSize int, fn func(id BlockID, data []byte, stored int) error) error {
	return parallelWorkers(ctx, s.opts.Concurrency, len(ids), func() func(context.Context, int) error {
		buf := make([]byte, blockSize)
		var obj []byte
		return func(ctx context.Context, k int) error {
			data, objBuf, stored, err := s.fetchBlock(ctx, ids[k], buf, obj)
			obj = objBuf
			if err != nil {
				return err
			}
			return fn(ids[k], data, stored)
		}
	})
}

// fetchBlock reads one block into obj (reused, returned for the next call),
// decodes it into buf and checks it against its content address.
func (s *Store) fetchBlock(ctx context.Context, id BlockID, buf, obj []byte) (data, objBuf []byte, stored int, err error) {
	obj, err = getInto(ctx, s.t, blockKey(id), obj[:0])
	if errors.Is(err, ErrNotFound) {
		return nil, obj, 0, fmt.Errorf("%w: block %s", ErrMissingBlock, id)
	}
	if err != nil {
		return nil, obj, 0, fmt.Errorf("block %s: %w", id, err)
	}
	stored = len(obj)
	data, err = s.codec.decode(buf, kindBlock, obj, id[:])
	if err != nil {
		if errors.Is(err, ErrKeyRequired) {
			return nil, obj, 0, err
		}
		return nil, obj, 0, fmt.Errorf("%w: block %s: %v", ErrCorrupt, id, err)
	}
	if got := s.codec.blockID(data); got != id {
		return nil, obj, 0, fmt.Errorf("%w: block %s: content hashes to %s", ErrCorrupt, id, got)
	}
	return data, obj, stored, nil
}
