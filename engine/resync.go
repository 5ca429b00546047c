package engine

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/cairnstore/cairn/replica"
	"slices"
	"sync"
	"time"
)

// Crash consistency across replicas.
//
// A write goes to every replica in parallel. If the engine dies with
// writes in flight, some of them may have reached some replicas and not
// others; all of those replicas keep the same generation, and reads of
// those blocks could then differ by replica. Unflushed writes may be lost,
// but every replica must return the same data.
//
// The generation carries a clean-shutdown mark: it is odd while an engine
// has the volume open (Open stores the next odd value before any I/O) and
// Close stores the next even value after a flush succeeded on every
// replica. An Open that finds an odd newest generation knows the last
// engine stopped uncleanly and resyncs:
//
//  1. The first newest replica (local first) is the source: it serves
//     every read. Each other newest replica whose snapshot chain matches
//     the source's becomes "resyncing" (a mismatch, from a crash in the
//     middle of a snapshot, makes it stale: it is rebuilt).
//  2. Resyncing replicas take every write like healthy ones; writes hold
//     the 64 KiB range locks while a resync runs.
//  3. Only blocks written since the last clean close can differ, and only
//     in head layers (snapshot layers are frozen under the I/O barrier
//     after a flush on every replica). Each replica process tracks the
//     regions written since the session began (Info.SessionStart,
//     ChangedSince; kept through unclean reopens), so the resync compares
//     the volume on the source and on each target over the union of those
//     regions (the tracking survives replica restarts); if any of them
//     cannot tell (its machine crashed while it was open, or it was
//     reverted or rebuilt since), over the union of their whole head
//     extents. It goes a
//     chunk at a time under the chunk's range lock and writes the source's
//     blocks where a target differs. Status.LastResync reports the amount
//     compared and whether tracking bounded it.
//  4. The targets become healthy. If the engine dies meanwhile, the
//     generation is still odd and the next Open resyncs again. If the
//     source fails, a resyncing replica (which has every write since Open)
//     becomes the source and the resync starts over.
//
// Control operations (snapshot, rebuild, revert, remove) wait for the
// resync: it holds Volume.ctl.

// resyncChunk is the unit compared and repaired under one range lock.
const resyncChunk = 256 << 10

// startResyncLocked picks the source and marks the other newest replicas
// resyncing. Called from Open with mu held.
func (v *Volume) startResyncLocked(ctx context.Context) {
	v.rebuildViewLocked()
	if len(v.view.healthy) < 2 {
		return
	}
	src := v.view.healthy[0]
	cctx, cancel := context.WithTimeout(ctx, v.cfg.ControlTimeout)
	defer cancel()
	infos := map[*member]replica.Info{}
	var imu sync.Mutex
	errs := v.parallel(v.view.healthy, func(m *member) error {
		info, err := m.r.Info(cctx)
		imu.Lock()
		infos[m] = info
		imu.Unlock()
		return err
	})
	for i, m := range v.view.healthy {
		m.sessionStart = infos[m].SessionStart
		switch {
		case errs[i] != nil:
			v.fail(m, fmt.Errorf("info: %w", errs[i]))
		case i == 0:
		case !sameChain(infos[src].Snapshots, infos[m].Snapshots):
			m.mode, m.reason = ModeStale, "unclean shutdown during a snapshot: its chain differs from "+src.addr
		default:
			m.mode, m.reason = ModeResyncing, "unclean shutdown: repairing from "+src.addr
			m.copied.Store(0)
			m.toCopy.Store(0)
		}
	}
	v.settleLocked()
	v.rebuildViewLocked()
	if len(v.view.resyncing) > 0 {
		v.log.Info("Unclean shutdown: resyncing replicas from the source", "source", src.addr,
			"replicas", len(v.view.resyncing))
	}
}

func sameChain(a, b []replica.SnapshotInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Incomplete != b[i].Incomplete ||
			a[i].Labels[SnapshotUIDLabel] != b[i].Labels[SnapshotUIDLabel] {
			return false
		}
	}
	return true
}

// Resyncing reports whether a resync is running.
func (v *Volume) Resyncing() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.view.resyncing) > 0
}

// errResyncRestart makes runResync start a new pass (the source changed).
var errResyncRestart = errors.New("engine: resync source changed")

// runResync repairs the resyncing replicas until none is left or the volume
// closes.
func (v *Volume) runResync() {
	v.ctl.Lock()
	defer v.ctl.Unlock()
	for {
		v.mu.RLock()
		closed, vw := v.closed, v.view
		v.mu.RUnlock()
		if closed || len(vw.resyncing) == 0 || len(vw.healthy) == 0 {
			return
		}
		src, targets := vw.healthy[0], vw.resyncing
		start := time.Now()
		n, err := v.resyncPass(src, targets)
		v.settle()
		if err != nil {
			v.log.Info("Resync pass did not finish", "source", src.addr, "err", err.Error())
			if !errors.Is(err, errResyncRestart) {
				time.Sleep(time.Second)
			}
			continue
		}
		v.mu.Lock()
		var done []string
		for _, m := range targets {
			if m.mode == ModeResyncing && !m.failed.Load() {
				m.mode, m.reason = ModeHealthy, ""
				done = append(done, m.addr)
			}
		}
		v.rebuildViewLocked()
		v.mu.Unlock()
		v.rebuildMu.Lock()
		res := *v.lastResync
		v.rebuildMu.Unlock()
		v.log.Info("Resync finished", "source", src.addr, "replicas", done, "bytesRepaired", n,
			"bytesCompared", res.Compared, "tracked", res.Tracked, "seconds", time.Since(start).Seconds())
	}
}

// ResyncResult describes the last finished resync pass.
type ResyncResult struct {
	Source   string    `json:"source"`
	Finished time.Time `json:"finished"`
	// Compared is the amount of the volume compared on every target.
	Compared int64 `json:"compared"`
	// Repaired is the amount rewritten on targets that differed.
	Repaired int64 `json:"repaired"`
	// Tracked is true when the replicas' change tracking bounded the
	// comparison; false when it covered their whole heads.
	Tracked bool `json:"tracked"`
}

// resyncRegions returns what a resync must compare: the union, over the
// source and targets, of the regions each has changed since the session
// it was opened in began (only writes of that session, cut short by the
// crash or still unrepaired from an earlier one, can differ). If any of
// them cannot tell (restarted, rebuilt or reverted since), the union of
// their whole head layers.
func (v *Volume) resyncRegions(ctx context.Context, ms []*member) (ext []replica.Extent, tracked bool, err error) {
	tracked = true
	for _, m := range ms {
		if m.sessionStart == 0 {
			tracked = false
			break
		}
		e, err := m.r.ChangedSince(ctx, m.sessionStart, v.Size())
		if err != nil {
			v.log.Info("Replica cannot bound the resync; comparing whole heads", "replica", m.addr, "err", err.Error())
			tracked = false
			break
		}
		ext = append(ext, e...)
	}
	if tracked {
		return mergeExtents(ext), true, nil
	}
	ext = nil
	for _, m := range ms {
		e, err := m.r.LayerExtents(ctx, "")
		if err != nil {
			v.fail(m, fmt.Errorf("resync extents: %w", err))
			return nil, false, fmt.Errorf("extents of %s: %w", m.addr, err)
		}
		ext = append(ext, e...)
	}
	return mergeExtents(ext), false, nil
}

// resyncPass compares every target with src over resyncRegions and
// repairs the differences; it returns the bytes rewritten.
func (v *Volume) resyncPass(src *member, targets []*member) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
	all, tracked, err := v.resyncRegions(ctx, append([]*member{src}, targets...))
	cancel()
	if err != nil {
		return 0, err
	}
	return v.repairRegions(src, targets, all, tracked)
}

// repairRegions compares every target with src over the extents all and
// rewrites the blocks that differ, a chunk at a time under the chunk's
// range lock; it returns the bytes rewritten and records LastResync.
func (v *Volume) repairRegions(src *member, targets []*member, all []replica.Extent, tracked bool) (int64, error) {
	var total int64
	for _, e := range all {
		total += e.Length
	}
	for _, m := range targets {
		m.copied.Store(0)
		m.toCopy.Store(total)
	}
	type job struct{ off, n int64 }
	jobs := make(chan job, 8)
	var (
		mu       sync.Mutex
		firstErr error
		repaired int64
		wg       sync.WaitGroup
	)
	setErr := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return firstErr != nil
	}
	workers := max(1, v.cfg.RebuildWorkers/4)
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := make([]byte, resyncChunk)
			b := make([]byte, resyncChunk)
			for j := range jobs {
				if failed() {
					continue
				}
				n, err := v.resyncChunk(src, targets, j.off, a[:j.n], b[:j.n])
				if err != nil {
					setErr(err)
					continue
				}
				mu.Lock()
				repaired += n
				mu.Unlock()
			}
		}()
	}
	for _, e := range all {
		for off := e.Offset; off < e.Offset+e.Length && !failed(); off += resyncChunk {
			jobs <- job{off, min(resyncChunk, e.Offset+e.Length-off)}
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr == nil {
		v.rebuildMu.Lock()
		v.lastResync = &ResyncResult{Source: src.addr, Finished: time.Now(), Compared: total, Repaired: repaired, Tracked: tracked}
		v.rebuildMu.Unlock()
	}
	return repaired, firstErr
}

// resyncChunk repairs one chunk under the I/O read lock and its range
// lock, so no write to it runs between reading the source and writing a
// target.
func (v *Volume) resyncChunk(src *member, targets []*member, off int64, a, b []byte) (int64, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return 0, ErrClosed
	}
	if len(v.view.healthy) == 0 || v.view.healthy[0] != src || src.failed.Load() {
		return 0, errResyncRestart
	}
	unlock := v.locks.lock(off, int64(len(a)))
	defer unlock()
	ctx, cancel := v.ioCtx()
	defer cancel()
	if err := src.r.ReadAt(ctx, a, off); err != nil {
		v.fail(src, fmt.Errorf("resync read: %w", err))
		return 0, errResyncRestart
	}
	var repaired int64
	for _, m := range targets {
		if m.mode != ModeResyncing || m.failed.Load() {
			continue
		}
		if err := m.r.ReadAt(ctx, b, off); err != nil {
			v.fail(m, fmt.Errorf("resync read: %w", err))
			continue
		}
		// Rewrite each run of differing blocks.
		for i := 0; i < len(a); {
			if bytes.Equal(a[i:i+blockSize], b[i:i+blockSize]) {
				i += blockSize
				continue
			}
			j := i + blockSize
			for j < len(a) && !bytes.Equal(a[j:j+blockSize], b[j:j+blockSize]) {
				j += blockSize
			}
			if err := m.r.WriteAt(ctx, a[i:j], off+int64(i)); err != nil {
				v.fail(m, fmt.Errorf("resync write: %w", err))
				break
			}
			repaired += int64(j - i)
			i = j
		}
		m.copied.Add(int64(len(a)))
	}
	return repaired, nil
}

// markCleanLocked flushes every healthy replica and, when all of them
// flushed and nothing is resyncing, stores the next even generation on
// them (see the clean-shutdown mark above). Called by Close with mu held.
func (v *Volume) markCleanLocked() {
	healthy := v.view.healthy
	if v.faulted || len(healthy) == 0 || len(v.view.resyncing) > 0 || v.gen%2 == 0 {
		return
	}
	gen := v.gen + 1
	errs := v.parallel(healthy, func(m *member) error {
		if m.failed.Load() {
			return errors.New("failed")
		}
		ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
		defer cancel()
		return m.r.Flush(ctx)
	})
	if err := errors.Join(errs...); err != nil {
		v.log.Info("Final flush failed; the next open resyncs", "err", err.Error())
		return
	}
	// A replica that misses the mark stays at the odd generation and is
	// older than the others next time: it is rebuilt, never trusted.
	errs = v.parallel(healthy, func(m *member) error {
		ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
		defer cancel()
		return m.r.SetGeneration(ctx, gen)
	})
	for i, m := range healthy {
		if errs[i] == nil {
			m.gen = gen
		}
	}
	v.gen = gen
	v.log.Info("Volume closed cleanly", "generation", gen)
}

// mergeExtents sorts and merges overlapping or adjacent extents.
func mergeExtents(ext []replica.Extent) []replica.Extent {
	if len(ext) < 2 {
		return ext
	}
	slices.SortFunc(ext, func(a, b replica.Extent) int { return cmp.Compare(a.Offset, b.Offset) })
	w := 0
	for _, e := range ext[1:] {
		if e.Offset <= ext[w].Offset+ext[w].Length {
			ext[w].Length = max(ext[w].Offset+ext[w].Length, e.Offset+e.Length) - ext[w].Offset
			continue
		}
		w++
		ext[w] = e
	}
	return ext[:w+1]
}
