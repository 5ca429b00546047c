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
	// BlocksDeleted blocks were referenced by the deleted backup only.
	BlocksDeleted int
	// Deferred is true when another operation held the block set for
	// longer than LockWait: the backup is gone from the catalogue and its
	// blocks are left for the next GC.
	Deferred bool
}

// Delete removes a backup: first from its volume's catalogue (it is no
// longer listed or restorable), then, under the exclusive block-set lock,
// the blocks that no other backup in the target references, then its
// manifest. Blocks shared with any backup of any volume stay. A backup a
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
	m, err := s.readManifest(lctx, volume, backup)
	if errors.Is(err, ErrBackupNotFound) {
		if unlisted {
			return res, fmt.Errorf("%w: %s/%s", ErrBackupNotFound, volume, backup)
		}
		return res, nil // manifest already gone (a concurrent gc)
	}
	if err != nil {
		return res, err
	}
	if unlisted {
		// Finish an interrupted Delete, never a commit: under the
		// exclusive block-set lock no backup runs, and a manifest ahead
		// of its catalogue is an interrupted commit (gc decides).
		c, err := s.readCatalogueObject(lctx, volume)
		if err != nil {
			return res, err
		}
		if m.Generation > c.Generation {
			return res, fmt.Errorf("%w: %s/%s (an uncommitted manifest; see gc --discard-uncommitted)", ErrBackupNotFound, volume, backup)
		}
	}
	refs, err := s.referencedBlocks(lctx)
	if err != nil {
		return res, err
	}
	done := map[BlockID]bool{}
	for _, id := range m.Blocks {
		if id.IsZero() || done[id] {
			continue
		}
		done[id] = true
		if _, used := refs[id]; used {
			continue
		}
		if err := l.valid(); err != nil {
			return res, err
		}
		if err := s.t.Delete(lctx, blockKey(id)); err != nil {
			return res, fmt.Errorf("delete %s/%s: block %s: %w", volume, backup, id, err)
		}
		res.BlocksDeleted++
	}
	if err := s.t.Delete(lctx, manifestKey(volume, backup)); err != nil {
		return res, err
	}
	return res, nil
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
	ReferencedBlocks   int
	UnreferencedBlocks int // removed unless DryRun
	UnreferencedBytes  int64
	OrphanManifests    int // manifests of unlisted (failed or deleted) backups
	// UncommittedManifests were ahead of their catalogue and discarded
	// (GCOptions.DiscardUncommitted).
	UncommittedManifests int
	StaleTemps           int
	ExpiredLocks         int
}

// GC removes every block no listed backup references and the manifests of
// backups that never completed or whose deletion was deferred. It holds
// the block set exclusively, so it never runs while a backup or restore
// holds its lock (expired locks of crashed holders do not count).
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
	refs, err := s.referencedBlocks(ctx)
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	res.ReferencedBlocks = len(refs)

	var garbage []string
	err = s.t.List(ctx, "blocks/", func(o ObjectInfo) error {
		i := strings.LastIndexByte(o.Key, '/')
		id, err := ParseBlockID(o.Key[i+1:])
		if err != nil {
			return nil // not a block
		}
		if _, ok := refs[id]; !ok {
			garbage = append(garbage, o.Key)
			res.UnreferencedBytes += o.Size
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("gc: list blocks: %w", err)
	}
	res.UnreferencedBlocks = len(garbage)

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
