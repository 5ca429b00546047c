package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// A restored replica's agent records which blocks it holds in
// DIR/standby/<replica>.held (backupstore.Held): the blocks of the backup
// it was restored to. When the replica's spec.restore moves to a newer
// backup (a DR standby following its source), the agent applies only the
// blocks whose ids differ, in place: a standby's replica never runs, so
// nothing else writes it. Before writing, the record is replaced by one
// where every block about to change is unknown, so an agent or machine
// crash mid-way leaves a record from which the next apply rewrites them.
// The record survives restarts of the agent, the manager and the replica,
// so a standby is never restored in full again.

func (a *Agent) heldFile(name string) string {
	return filepath.Join(a.opts.DataDir, "standby", name+".held")
}

// loadHeld returns the replica's held record, or nil when it has none (a
// replica restored before records existed, or not restored at all).
func (a *Agent) loadHeld(name string) (*backupstore.Held, error) {
	b, err := os.ReadFile(a.heldFile(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	h := &backupstore.Held{}
	if err := h.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("%s: %w", a.heldFile(name), err)
	}
	return h, nil
}

// saveHeld writes the replica's held record durably.
func (a *Agent) saveHeld(name string, h *backupstore.Held) error {
	b, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(a.heldFile(name)), 0o700); err != nil {
		return err
	}
	return writePrivate(a.heldFile(name), b)
}

// removeHeld deletes the record with the replica's data.
func (a *Agent) removeHeld(name string) error {
	if err := os.Remove(a.heldFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// recordRestored writes the held record of a replica just restored in full
// into dir (before it is renamed into place).
func (a *Agent) recordRestored(ctx context.Context, name string, store *backupstore.Store, src *cairnv1.BackupSource) error {
	m, err := store.ReadManifest(ctx, src.Volume, src.Backup)
	if err != nil {
		return err
	}
	return a.saveHeld(name, backupstore.HeldOf(m))
}

// reconcileFollow runs for a replica whose data exists: when spec.restore
// names a backup other than the one it holds, it applies that backup
// incrementally (in a job, polled like a restore).
func (r *ReplicaReconciler) reconcileFollow(ctx context.Context, s *replicaScope) (ctrl.Result, error) {
	src, name := s.obj.Spec.Restore, s.obj.Name
	// A full restore that renamed the replica into place before its job
	// was polled has nothing left to report: its held record names the
	// backup it wrote.
	if job := r.Agent.jobs.get(restoreKey(name)); job != nil && job.finished() {
		r.Agent.jobs.stop(restoreKey(name))
	}
	// A finished apply is reported before the record is read: the record
	// already names the backup the apply wrote.
	if job := r.Agent.jobs.get(applyKey(name)); job != nil && job.what == src.Backup {
		return r.pollApply(ctx, s, job)
	}
	held, err := r.Agent.loadHeld(name)
	if err != nil {
		return ctrl.Result{}, err
	}
	if held == nil || held.Backup == src.Backup {
		s.restored = src.Backup
		return ctrl.Result{}, nil
	}
	r.Agent.jobs.stop(restoreKey(name))
	r.Agent.jobs.stop(applyKey(name))
	store, err := r.Agent.stores.Open(ctx, r.APIReader, string(src.BackupTargetRef), targets.DefaultTimeout)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("%w: %w", errRestoreWaiting, err)
	}
	log.FromContext(ctx).Info("Applying backup to standby replica", "sourceVolume", src.Volume, "backup", src.Backup, "held", held.Backup)
	return r.pollApply(ctx, s, r.Agent.startApply(name, store, src, held))
}

// pollApply reports a running apply, or its result once it ended.
func (r *ReplicaReconciler) pollApply(ctx context.Context, s *replicaScope, job *job) (ctrl.Result, error) {
	src := s.obj.Spec.Restore
	if !job.finished() {
		s.restoring, s.restorePercent = true, job.percent.Load()
		return ctrl.Result{RequeueAfter: restorePoll}, nil
	}
	r.Agent.jobs.stop(applyKey(s.obj.Name))
	switch {
	case errors.Is(job.err, backupstore.ErrCorrupt), errors.Is(job.err, backupstore.ErrBackupNotFound), errors.Is(job.err, backupstore.ErrFormat),
		errors.Is(job.err, backupstore.ErrSizeMismatch), errors.Is(job.err, backupstore.ErrMissingBlock):
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("%w: backup %s: %w", errRestoreFailed, src.Backup, job.err))
	case job.err != nil:
		return ctrl.Result{}, fmt.Errorf("applying backup %s failed: %w", src.Backup, job.err)
	}
	res, _ := job.result.(*cairnv1.ReplicaRestoreResult)
	log.FromContext(ctx).Info("Standby replica updated", "backup", src.Backup, "bytesWritten", res.BytesWritten, "bytesFetched", res.BytesFetched)
	r.Agent.recorder.Eventf(s.obj, nil, corev1.EventTypeNormal, "Restored", "Restore", "applied backup %s of %s over %s: %d bytes written",
		src.Backup, src.Volume, res.Since, res.BytesWritten)
	s.restored, s.lastRestore = src.Backup, res
	return ctrl.Result{}, nil
}

// startApply runs one incremental apply in the background, recording the
// held blocks before and after it writes.
func (a *Agent) startApply(name string, store *backupstore.Store, src *cairnv1.BackupSource, held *backupstore.Held) *job {
	return a.jobs.start(applyKey(name), src.Backup, func() { a.notify(replicaPrefix + name) }, func(ctx context.Context, j *job) error {
		start := time.Now()
		res, now, err := store.ApplyReplica(ctx, backupstore.ApplyOptions{
			Dir: a.replicaDir(name), Volume: src.Volume, Backup: src.Backup, Held: held,
			Started:  func(h *backupstore.Held) error { return a.saveHeld(name, h) },
			Progress: j.progress,
		})
		if err != nil {
			return err
		}
		if err := a.saveHeld(name, now); err != nil {
			return err
		}
		j.result = &cairnv1.ReplicaRestoreResult{Backup: src.Backup, Since: held.Backup, Incremental: res.Incremental,
			BytesWritten: res.BytesWritten, BytesFetched: res.BytesFetched, Duration: &metav1.Duration{Duration: time.Since(start)}}
		return nil
	})
}

// applyKey is the job key of a standby replica's incremental apply: apart
// from restoreKey, so a finished full restore is never taken for an apply.
func applyKey(replica string) string { return "apply/" + replica }
