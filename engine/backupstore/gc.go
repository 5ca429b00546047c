package backupstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"
)

// DeleteResult summarises a Delete.
type DeleteResult struct {
	// BlocksDeleted blocks were referenced by no listed backup any more
	// and were removed: with the packs that held only such blocks, or by
	// repacking packs that were mostly such blocks (see doc.go, GC).
	BlocksDeleted int
	PacksDeleted  int
	PacksRepacked int
	// Deferred is true when another operation held the block set for
	// longer than LockWait: the backup is gone from the catalogue and its
	// blocks are left for the next GC.
	Deferred bool
}

// Delete removes a backup: first from its volume's catalogue (it is no
// longer listed or restorable), then, under the exclusive block-set lock,
// the packs that hold only blocks no listed backup references (and
// repacks packs that are mostly such blocks), then its manifest. Blocks
// shared with any backup of any volume stay. A backup a
// live pin holds is not deleted (ErrPinned).
//
// A Delete cut short after its catalogue write (its process killed) is
// finished by the next Delete of the same backup: unlisted, but with its
// manifest still there and not ahead of the catalogue (so not a commit
// in flight or interrupted, see checkRollback), its blocks and manifest
// are removed as if it were listed.
func (s *Store) Delete(ctx context.Context, volume, backup string) (DeleteResult, error) {
	var res DeleteResult
	if err := s.checkWritable(); err != nil {
		return res, err
	}
	if err := validName("volume", volume); err != nil {
		return res, err
	}
	if err := validName("backup", backup); err != nil {
		return res, err
	}
	if err := s.checkUnpinned(ctx, volume, backup); err != nil {
		return res, err
	}
	err := s.updateCatalogue(ctx, volume, "delete "+volume+"/"+backup, func(_ context.Context, c *catalogue) error {
		for i, b := range c.Backups {
			if b.ID == backup {
				c.Backups = append(c.Backups[:i], c.Backups[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("%w: %s/%s", ErrBackupNotFound, volume, backup)
	})
	unlisted := errors.Is(err, ErrBackupNotFound)
	if err != nil && !unlisted {
		return res, err
	}
	l, lctx, err := s.acquire(ctx, scopeBlocks, true, "delete "+volume+"/"+backup, s.opts.LockWait)
	if errors.Is(err, ErrLocked) && !unlisted {
		res.Deferred = true
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("delete %s/%s: backup unlisted, blocks left for gc: %w", volume, backup, err)
	}
	defer l.release()
	if unlisted {
		if err := s.checkInterruptedDelete(lctx, volume, backup); err != nil {
			return res, err
		}
	}
	c, err := s.collect(lctx, l, false, false)
	if err != nil {
		return res, fmt.Errorf("delete %s/%s: backup unlisted, blocks left for gc: %w", volume, backup, err)
	}
	res.BlocksDeleted, res.PacksDeleted, res.PacksRepacked = c.UnreferencedBlocks, c.PacksDeleted, c.PacksRepacked
	if err := l.valid(); err != nil {
		return res, err
	}
	if err := s.t.Delete(lctx, manifestKey(volume, backup)); err != nil {
		return res, err
	}
	return res, nil
}

// checkInterruptedDelete allows a Delete of an unlisted backup only to
// finish an interrupted Delete, never a commit: under the exclusive
// block-set lock no backup runs, and a manifest ahead of its catalogue is
// an interrupted commit (gc decides). A missing manifest is
// ErrBackupNotFound.
func (s *Store) checkInterruptedDelete(ctx context.Context, volume, backup string) error {
	m, err := s.readManifest(ctx, volume, backup)
	if err != nil {
		return err
	}
	c, err := s.readCatalogueObject(ctx, volume)
	if err != nil {
		return err
	}
	if m.Generation > c.Generation {
		return fmt.Errorf("%w: %s/%s (an uncommitted manifest; see gc --discard-uncommitted)", ErrBackupNotFound, volume, backup)
	}
	return nil
}

// referencedBlocks returns every block referenced by a listed backup of any
// volume. The caller holds the block set exclusively.
func (s *Store) referencedBlocks(ctx context.Context) (map[BlockID]struct{}, error) {
	vols, err := s.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	refs := map[BlockID]struct{}{}
	for _, v := range vols {
		list, err := s.List(ctx, v)
		if err != nil {
			return nil, err
		}
		for _, b := range list {
			m, err := s.checkedManifest(ctx, b)
			if err != nil {
				// Refuse to collect anything if a listed backup cannot be read:
				// its blocks would be unaccounted for.
				return nil, fmt.Errorf("read manifest of listed backup %s/%s: %w", v, b.ID, err)
			}
			for _, id := range m.Blocks {
				if !id.IsZero() {
					refs[id] = struct{}{}
				}
			}
		}
	}
	return refs, nil
}

// GCOptions tune a garbage collection.
type GCOptions struct {
	// DryRun reports what would be removed without removing it.
	DryRun bool
	// DiscardUncommitted removes the manifests that are ahead of their
	// catalogue (backups interrupted between their manifest and catalogue
	// writes), which otherwise fail reads with ErrCatalogueRollback. Only
	// for an operator who knows no catalogue was rolled back.
	DiscardUncommitted bool
}

// GCResult summarises a garbage collection.
type GCResult struct {
	ReferencedBlocks int
	// UnreferencedBlocks (UnreferencedBytes stored) are removed unless
	// DryRun: the records of PacksDeleted, and the unreferenced records
	// of PacksRepacked, whose RepackedBytes of referenced records were
	// copied into new packs first.
	UnreferencedBlocks int
	UnreferencedBytes  int64
	PacksDeleted       int
	PacksRepacked      int
	RepackedBytes      int64
	// RepackSkipped packs were mostly unreferenced but kept as they are,
	// because a referenced record in them failed verification (verify
	// names it).
	RepackSkipped int
	// UnindexedPacks are packs no index object lists and holding no
	// block a listed backup needs (from backups interrupted before they
	// indexed them): removed. AdoptedPacks no index listed either, but
	// they hold referenced blocks (an index object was lost): they are
	// indexed again from their trailers. UnreadablePacks are unindexed
	// packs whose trailer cannot be read: kept, never deleted blind.
	UnindexedPacks  int
	AdoptedPacks    int
	UnreadablePacks int
	// IndexObjectsReplaced index objects were rewritten (without the
	// removed packs, or consolidated: see doc.go).
	IndexObjectsReplaced int
	OrphanManifests      int // manifests of unlisted (failed or deleted) backups
	// UncommittedManifests were ahead of their catalogue and discarded
	// (GCOptions.DiscardUncommitted).
	UncommittedManifests int
	StaleTemps           int
	ExpiredLocks         int
}

// GC removes every pack whose blocks no listed backup references, repacks
// packs that are mostly such blocks, removes packs no index lists (after
// checking their trailers), consolidates the index, and removes the
// manifests of backups that never completed or whose deletion was
// deferred. It holds the block set exclusively, so it never runs while a
// backup or restore holds its lock (expired locks of crashed holders do
// not count).
func (s *Store) GC(ctx context.Context, opts GCOptions) (GCResult, error) {
	var res GCResult
	if err := s.checkWritable(); err != nil {
		return res, err
	}
	l, ctx, err := s.acquire(ctx, scopeBlocks, true, "gc", s.opts.LockWait)
	if err != nil {
		return res, err
	}
	defer l.release()
	if opts.DiscardUncommitted {
		if res.UncommittedManifests, err = s.discardUncommitted(ctx, opts.DryRun); err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
	}
	c, err := s.collect(ctx, l, opts.DryRun, true)
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	c.UncommittedManifests = res.UncommittedManifests
	res = c

	var garbage []string
	// Manifests not in their catalogue.
	listed := map[string]bool{}
	vols, err := s.Volumes(ctx)
	if err != nil {
		return res, err
	}
	for _, v := range vols {
		list, err := s.List(ctx, v)
		if err != nil {
			return res, err
		}
		for _, b := range list {
			listed[manifestKey(v, b.ID)] = true
		}
	}
	err = s.t.List(ctx, "volumes/", func(o ObjectInfo) error {
		if strings.HasSuffix(o.Key, ".manifest") && !listed[o.Key] {
			garbage = append(garbage, o.Key)
			res.OrphanManifests++
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	if opts.DryRun {
		return res, nil
	}
	for _, k := range garbage {
		if err := l.valid(); err != nil {
			return res, err
		}
		if err := s.t.Delete(ctx, k); err != nil {
			return res, fmt.Errorf("gc: delete %s: %w", k, err)
		}
	}
	if ft, ok := s.t.(*fileTarget); ok {
		cutoff := time.Now().Add(-time.Hour)
		res.StaleTemps, _ = ft.removeStaleTemps(func(fi fs.FileInfo) bool { return fi.ModTime().Before(cutoff) })
	}
	locks, err := s.Locks(ctx)
	if err == nil {
		for _, rec := range locks {
			if s.lockExpired(rec, s.opts.ExpiryClock()) {
				if s.t.Delete(ctx, lockKey(rec.ID)) == nil {
					res.ExpiredLocks++
				}
			}
		}
	}
	return res, nil
}
