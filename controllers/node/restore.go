package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine/backupstore"
	"github.com/cairnstore/cairn/internal/durable"
	"github.com/cairnstore/cairn/replica"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=backuptargets,verbs=get

// restoredGeneration is the generation a restored replica starts with: an
// even (clean) generation above the 0 of an empty replica, so an engine that
// opens the restored replicas beside an empty one rebuilds the empty one
// from them instead of treating it as an equal.
const restoredGeneration = 2

// restorePoll is how often a running restore's progress is reported.
const restorePoll = 2 * time.Second

// restoreDir is where a replica is restored before it is renamed into
// place: a name no Replica can have, so an agent starting after a crash
// removes it as an orphan.
func (a *Agent) restoreDir(name string) string { return a.replicaDir(".restore-" + name) }

// reconcileRestore fills a replica with spec.restore from its backup
// before it first runs. The replica's directory appears only when the
// restore is complete, so its existence is the record that it is done.
func (r *ReplicaReconciler) reconcileRestore(ctx context.Context, s *replicaScope) (ctrl.Result, error) {
	src := s.obj.Spec.Restore
	if src == nil {
		return ctrl.Result{}, nil
	}
	name := s.obj.Name
	if _, err := os.Stat(r.Agent.replicaDir(name)); err == nil {
		return r.reconcileFollow(ctx, s)
	}
	job := r.Agent.jobs.get(restoreKey(name))
	if job == nil || job.what != src.Backup {
		r.Agent.jobs.stop(restoreKey(name))
		store, err := r.Agent.stores.Open(ctx, r.APIReader, string(src.BackupTargetRef), targets.DefaultTimeout)
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("%w: %w", errRestoreWaiting, err)
		}
		job = r.Agent.startRestore(name, store, src)
		log.FromContext(ctx).Info("Restoring replica from backup", "target", src.BackupTargetRef, "sourceVolume", src.Volume, "backup", src.Backup)
	}
	select {
	case <-job.done:
	default:
		s.restoring, s.restorePercent = true, job.percent.Load()
		return ctrl.Result{RequeueAfter: restorePoll}, nil
	}
	r.Agent.jobs.stop(restoreKey(name))
	switch {
	case errors.Is(job.err, backupstore.ErrCorrupt), errors.Is(job.err, backupstore.ErrBackupNotFound), errors.Is(job.err, backupstore.ErrSizeMismatch):
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("%w: backup %s: %w", errRestoreFailed, src.Backup, job.err))
	case job.err != nil:
		return ctrl.Result{}, fmt.Errorf("restore of backup %s failed: %w", src.Backup, job.err)
	}
	log.FromContext(ctx).Info("Replica restored from backup", "backup", src.Backup)
	r.Agent.recorder.Eventf(s.obj, nil, corev1.EventTypeNormal, "Restored", "Restore", "replica filled from backup %s of %s", src.Backup, src.Volume)
	s.restored = src.Backup
	return ctrl.Result{}, nil
}

// errRestoreFailed marks a restore that cannot succeed by retrying (the
// backup is gone, corrupt or does not fit).
var errRestoreFailed = errors.New("restore failed")

// errRestoreWaiting marks a restore that cannot start yet (its target
// cannot be opened); it is retried with backoff.
var errRestoreWaiting = errors.New("waiting for the backup target")

// startRestore runs the restore of one replica in the background and
// requeues the replica when it ends.
func (a *Agent) startRestore(name string, store *backupstore.Store, src *cairnv1.BackupSource) *job {
	return a.jobs.start(restoreKey(name), src.Backup, func() { a.notify(replicaPrefix + name) }, func(ctx context.Context, j *job) error {
		return a.restoreReplica(ctx, name, store, src, j.progress)
	})
}

func restoreKey(replica string) string { return "restore/" + replica }

// restoreReplica restores into a scratch directory, marks the replica with
// the restored generation and renames it into place.
func (a *Agent) restoreReplica(ctx context.Context, name string, store *backupstore.Store, src *cairnv1.BackupSource, progress func(backupstore.Progress)) error {
	tmp := a.restoreDir(name)
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	err := a.restoreInto(ctx, tmp, store, src, progress)
	if err == nil {
		err = a.recordRestored(ctx, name, store, src)
	}
	if err == nil {
		err = os.Rename(tmp, a.replicaDir(name))
	}
	if err == nil {
		err = durable.SyncDir(filepath.Dir(tmp))
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
	}
	return err
}

func (a *Agent) restoreInto(ctx context.Context, dir string, store *backupstore.Store, src *cairnv1.BackupSource, progress func(backupstore.Progress)) error {
	if _, err := store.RestoreReplica(ctx, dir, src.Volume, src.Backup, "", progress); err != nil {
		return err
	}
	rep, err := replica.Open(dir)
	if err != nil {
		return err
	}
	if err := rep.SetGeneration(restoredGeneration); err != nil {
		rep.Close()
		return err
	}
	return rep.Close()
}
