package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// restoreWait is how often a volume waiting for its backup target (missing,
// not readable yet, or without any backup) looks again.
const restoreWait = 15 * time.Second

// resolveRestore fixes the backup a fromBackup volume restores (once, in
// status.restoredBackup) and reports the Restored condition from what the
// replicas' agents report. Replicas are placed only once the backup is
// known; the engine starts only once Restored is True.
func (r *VolumeReconciler) resolveRestore(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	src := s.vol.Spec.FromBackup
	if src == nil || meta.IsStatusConditionTrue(s.vol.Status.Conditions, v1.ConditionRestored) {
		return ctrl.Result{}, nil
	}
	if s.vol.Status.RestoredBackup == "" {
		info, res, err := r.pickBackup(ctx, s, src)
		if info == nil {
			return res, err
		}
		s.vol.Status.RestoredBackup = info.ID
		log.FromContext(ctx).Info("Restoring from backup", "target", src.BackupTargetRef, "sourceVolume", src.Volume, "backup", info.ID, "bytes", info.Size)
	}
	done, failed := s.restoreProgress()
	switch {
	case failed != nil:
		c := meta.FindStatusCondition(failed.Status.Conditions, v1.ConditionStalled)
		s.out = outcome{stalled: true, reason: "RestoreFailed", message: fmt.Sprintf("replica %s on %s: %s", failed.Name, failed.Spec.NodeID, c.Message)}
		s.setRestored(false, "RestoreFailed", s.out.message)
	case done > 0 && done == s.restoringReplicas():
		s.setRestored(true, "Restored", fmt.Sprintf("every replica holds backup %s of %s", s.vol.Status.RestoredBackup, src.Volume))
	default:
		s.setRestored(false, "Restoring", fmt.Sprintf("%d of %d replicas restored from backup %s of %s", done, s.restoringReplicas(), s.vol.Status.RestoredBackup, src.Volume))
	}
	return ctrl.Result{}, nil
}

// pickBackup resolves spec.fromBackup to one complete backup no larger
// than the volume. It returns nil with the result to wait for when the
// target or the backup is not there yet.
func (r *VolumeReconciler) pickBackup(ctx context.Context, s *volumeScope, src *v1.BackupSource) (*backupstore.BackupInfo, ctrl.Result, error) {
	wait := func(reason, format string, args ...any) (*backupstore.BackupInfo, ctrl.Result, error) {
		msg := fmt.Sprintf(format, args...)
		s.setRestored(false, reason, msg)
		s.out = outcome{reason: reason, message: msg}
		return nil, ctrl.Result{RequeueAfter: restoreWait}, nil
	}
	store, err := r.Stores.Open(ctx, r.Client, string(src.BackupTargetRef), targets.DefaultTimeout)
	var se *targets.SpecError
	switch {
	case errors.Is(err, targets.ErrNotFound):
		return wait("WaitingForBackupTarget", "BackupTarget %s does not exist", src.BackupTargetRef)
	case errors.As(err, &se):
		return wait("WaitingForBackupTarget", "BackupTarget %s cannot be opened: %s", src.BackupTargetRef, se.Message)
	case err != nil:
		return wait("WaitingForBackupTarget", "%v", err)
	}
	var info backupstore.BackupInfo
	if src.Backup == "" {
		info, err = store.Latest(ctx, src.Volume)
	} else {
		info, err = store.Get(ctx, src.Volume, src.Backup)
	}
	switch {
	case errors.Is(err, backupstore.ErrBackupNotFound) && src.Backup == "":
		return wait("WaitingForBackup", "BackupTarget %s has no complete backup of volume %s yet", src.BackupTargetRef, src.Volume)
	case errors.Is(err, backupstore.ErrBackupNotFound):
		return r.stallRestore(s, "BackupNotFound", "BackupTarget %s has no complete backup %s of volume %s", src.BackupTargetRef, src.Backup, src.Volume)
	case err != nil:
		return wait("WaitingForBackupTarget", "reading the catalogue of %s in BackupTarget %s: %v", src.Volume, src.BackupTargetRef, err)
	case info.Size > s.vol.Spec.Size.Value():
		return r.stallRestore(s, "BackupTooLarge", "backup %s of %s holds %d bytes; spec.size %s is smaller", info.ID, src.Volume, info.Size, s.vol.Spec.Size.String())
	}
	return &info, ctrl.Result{}, nil
}

func (r *VolumeReconciler) stallRestore(s *volumeScope, reason, format string, args ...any) (*backupstore.BackupInfo, ctrl.Result, error) {
	s.out = outcome{stalled: true, reason: reason, message: fmt.Sprintf(format, args...)}
	s.setRestored(false, reason, s.out.message)
	return nil, ctrl.Result{}, reconcile.TerminalError(errors.New(s.out.message))
}

// restoring reports whether new replicas must be filled from the backup
// or, for a volume created fromSnapshot or fromVolume, from a snapshot.
func (s *volumeScope) restoring() bool {
	return s.vol.Spec.FromBackup != nil && !meta.IsStatusConditionTrue(s.vol.Status.Conditions, v1.ConditionRestored) || s.copying()
}

// restoreProgress counts the live replicas that hold the chosen backup
// (or copy of the chosen snapshot) and returns one whose restore stalled,
// if any.
func (s *volumeScope) restoreProgress() (done int, failed *v1.Replica) {
	for i := range s.replicas {
		rep := &s.replicas[i]
		if !rep.DeletionTimestamp.IsZero() || rep.Spec.Restore == nil && rep.Spec.CopyFrom == nil {
			continue
		}
		if rep.Spec.Restore != nil && rep.Status.RestoredBackup == s.vol.Status.RestoredBackup || rep.Spec.CopyFrom != nil && rep.Status.CopiedSnapshot == s.copiedSnapshot() {
			done++
		} else if c := meta.FindStatusCondition(rep.Status.Conditions, v1.ConditionStalled); c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == rep.Generation {
			// A stall reported for an earlier spec.restore (a standby
			// since pointed at another backup) is not this restore's.
			failed = rep
		}
	}
	return done, failed
}

// restoringReplicas counts the live replicas created to be restored.
func (s *volumeScope) restoringReplicas() int {
	n := 0
	for _, rep := range s.replicas {
		if rep.DeletionTimestamp.IsZero() && (rep.Spec.Restore != nil || rep.Spec.CopyFrom != nil) {
			n++
		}
	}
	return n
}

func (s *volumeScope) setRestored(ok bool, reason, message string) {
	c := metav1.Condition{Type: v1.ConditionRestored, Status: metav1.ConditionFalse, Reason: reason, Message: message, ObservedGeneration: s.vol.Generation}
	if ok {
		c.Status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(&s.vol.Status.Conditions, c)
}
