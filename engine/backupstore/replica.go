package backupstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/cairnstore/cairn/replica"
)

// ReplicaBackupOptions describe a backup of a replica snapshot.
type ReplicaBackupOptions struct {
	Volume   string
	Snapshot string
	// Since names the last backed-up snapshot to diff against; "" means
	// the snapshot recorded in the volume's latest backup.
	Since string
	// Full ignores earlier backups (the backup still deduplicates).
	Full        bool
	BlockSize   int
	Compression *Compression
	Labels      map[string]string
	Progress    func(Progress)
}

// SnapshotSource is the replica a backup reads: a local *replica.Replica
// (the CLI, with the replica stopped) or a *replica.Remote reading through
// the running replica process.
type SnapshotSource interface {
	OpenSnapshot(name string) (replica.SnapshotReader, error)
	Diff(from, to string) ([]replica.Extent, error)
}

// BackupReplica backs up a snapshot of a replica. Incremental by default:
// it asks the replica for the extents changed since the snapshot of the
// volume's latest backup and reads only those; if that snapshot was
// removed from the replica it hashes every block and uploads only blocks
// the previous backup and the target lack. A first backup reads only the
// allocated extents.
func (s *Store) BackupReplica(ctx context.Context, r SnapshotSource, opts ReplicaBackupOptions) (BackupInfo, error) {
	snap, err := r.OpenSnapshot(opts.Snapshot)
	if err != nil {
		return BackupInfo{}, fmt.Errorf("backup %s: open snapshot %q: %w", opts.Volume, opts.Snapshot, err)
	}
	defer snap.Close()
	bo := BackupOptions{Volume: opts.Volume, Snapshot: opts.Snapshot, Source: snap, BlockSize: opts.BlockSize,
		Compression: opts.Compression, Labels: opts.Labels, Progress: opts.Progress}

	var base *BackupInfo
	if !opts.Full {
		list, err := s.List(ctx, opts.Volume)
		if err != nil {
			return BackupInfo{}, err
		}
		for i := len(list) - 1; i >= 0; i-- {
			if opts.Since == "" || list[i].Snapshot == opts.Since {
				base = &list[i]
				break
			}
		}
		if base == nil && opts.Since != "" {
			return BackupInfo{}, fmt.Errorf("%w: no backup of %s from snapshot %q", ErrBackupNotFound, opts.Volume, opts.Since)
		}
	}
	from := ""
	if base != nil {
		bo.Base = base.ID
		from = base.Snapshot
	} else {
		bo.NoBase = true
	}
	if base == nil || from != "" {
		ext, err := r.Diff(from, opts.Snapshot)
		switch {
		case err == nil:
			bo.Changed = make([]Extent, len(ext))
			for i, e := range ext {
				bo.Changed[i] = Extent{Offset: e.Offset, Length: e.Length}
			}
		case from != "" && (errors.Is(err, replica.ErrNotFound) || errors.Is(err, replica.ErrInvalid)):
			// The last backed-up snapshot is gone (or not older than this
			// one): hash every block and compare with the base instead.
		default:
			return BackupInfo{}, fmt.Errorf("backup %s: diff %q..%q: %w", opts.Volume, from, opts.Snapshot, err)
		}
	}
	return s.CreateBackup(ctx, bo)
}

// RestoreReplica restores a backup into a new replica created in dir, or,
// with since set (the backup the replica in dir already holds), applies
// only the blocks that differ to that replica's head. The replica is
// flushed before it returns.
func (s *Store) RestoreReplica(ctx context.Context, dir, volume, backup, since string, progress func(Progress)) (RestoreResult, error) {
	info, err := s.resolve(ctx, volume, backup)
	if err != nil {
		return RestoreResult{}, err
	}
	var r *replica.Replica
	if since == "" {
		if r, err = replica.Create(dir, info.Size); err != nil {
			return RestoreResult{}, fmt.Errorf("restore %s/%s: create replica: %w", volume, info.ID, err)
		}
	} else if r, err = replica.Open(dir); err != nil {
		return RestoreResult{}, fmt.Errorf("restore %s/%s: open replica: %w", volume, info.ID, err)
	}
	defer r.Close()
	if r.Size() != info.Size {
		return RestoreResult{}, fmt.Errorf("restore %s/%s: %w: replica %d bytes, backup %d", volume, info.ID, ErrSizeMismatch, r.Size(), info.Size)
	}
	res, err := s.Restore(ctx, RestoreOptions{Volume: volume, Backup: info.ID, Sink: r, SinkZeroed: since == "", Since: since, Progress: progress})
	if err != nil {
		return res, err
	}
	return res, r.Flush()
}

func (s *Store) resolve(ctx context.Context, volume, backup string) (BackupInfo, error) {
	if backup == "" {
		return s.Latest(ctx, volume)
	}
	return s.Get(ctx, volume, backup)
}
