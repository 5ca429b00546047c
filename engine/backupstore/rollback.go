package backupstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// checkRollback looks for proof that c is older than a catalogue the volume
// already had: a manifest c does not list that was committed at a newer
// catalogue generation (every commit writes its manifest with the
// generation of the catalogue that will list it). Unless the caller holds
// the volume lock, a commit in flight (its lock is live, or a re-read
// catalogue has caught up) is not counted. On success c may have been
// replaced by the re-read catalogue.
func (s *Store) checkRollback(ctx context.Context, c *catalogue, locked bool) error {
	ahead, err := s.manifestsAhead(ctx, c)
	if err != nil || len(ahead) == 0 {
		return err
	}
	if !locked {
		held, err := s.volumeLockHeld(ctx, c.Volume)
		if err != nil || held {
			return err
		}
		fresh, err := s.readCatalogueObject(ctx, c.Volume)
		if err != nil {
			return err
		}
		if ahead, err = s.manifestsAhead(ctx, fresh); err != nil {
			return err
		}
		*c = *fresh
		if len(ahead) == 0 {
			return nil
		}
	}
	m := ahead[0]
	return fmt.Errorf("%w: volume %s: catalogue generation %d does not list backup %s, committed at generation %d "+
		"(an older catalogue was put back, or that backup was interrupted while committing; "+
		"if so, `cairn backup gc --discard-uncommitted` removes it)",
		ErrCatalogueRollback, c.Volume, c.Generation, m.Backup, m.Generation)
}

// manifestsAhead returns the manifests of the volume that c does not list
// and whose generation is newer than c's. Unlisted manifests that fail to
// decode prove nothing and are skipped.
func (s *Store) manifestsAhead(ctx context.Context, c *catalogue) ([]*Manifest, error) {
	listed := make(map[string]bool, len(c.Backups))
	for _, b := range c.Backups {
		listed[b.ID] = true
	}
	prefix := "volumes/" + c.Volume + "/backups/"
	var unlisted []string
	err := s.t.List(ctx, prefix, func(o ObjectInfo) error {
		id, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, prefix), ".manifest")
		if ok && !listed[id] && validName("backup", id) == nil {
			unlisted = append(unlisted, id)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var ahead []*Manifest
	for _, id := range unlisted {
		m, err := s.readManifest(ctx, c.Volume, id)
		switch {
		case err == nil && m.Generation > c.Generation:
			ahead = append(ahead, m)
		case err == nil || errors.Is(err, ErrBackupNotFound) || errors.Is(err, ErrCorrupt) ||
			errors.Is(err, ErrFormat) || errors.Is(err, ErrObjectTooLarge):
		default:
			return nil, fmt.Errorf("volume %s: unlisted manifest of %s: %w", c.Volume, id, err)
		}
	}
	return ahead, nil
}

// volumeLockHeld reports whether a live lock guards the volume's catalogue.
func (s *Store) volumeLockHeld(ctx context.Context, volume string) (bool, error) {
	locks, err := s.Locks(ctx)
	if err != nil {
		return false, err
	}
	now := s.opts.ExpiryClock()
	for _, rec := range locks {
		if rec.Scope == scopeVolumePrefix+volume && !s.lockExpired(rec, now) {
			return true, nil
		}
	}
	return false, nil
}

// discardUncommitted removes, under each volume's lock, the manifests that
// are ahead of their catalogue (see checkRollback) and returns how many it
// found. Only an operator who knows those backups were interrupted, not
// hidden by a rolled-back catalogue, asks for it.
func (s *Store) discardUncommitted(ctx context.Context, dryRun bool) (int, error) {
	vols, err := s.Volumes(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, v := range vols {
		err := s.withVolumeLock(ctx, v, "gc discard uncommitted", func(lctx context.Context, _ *lock) error {
			c, err := s.readCatalogueObject(lctx, v)
			if err != nil {
				return err
			}
			ahead, err := s.manifestsAhead(lctx, c)
			if err != nil {
				return err
			}
			for _, m := range ahead {
				n++
				if !dryRun {
					if err := s.t.Delete(lctx, manifestKey(v, m.Backup)); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("volume %s: %w", v, err)
		}
	}
	return n, nil
}
