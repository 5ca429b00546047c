package dr

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// ensureVolume finds the standby Volume or creates it from the newest
// complete backup of the source.
func (r *Reconciler) ensureVolume(ctx context.Context, s *scope) (ctrl.Result, error) {
	name := VolumeName(s.drv.Namespace, s.drv.Name)
	vol := &v1.Volume{}
	err := r.Get(ctx, client.ObjectKey{Name: name}, vol)
	switch {
	case err == nil:
		s.vol, s.drv.Status.VolumeName = vol, name
		return ctrl.Result{}, nil
	case !apierrors.IsNotFound(err):
		return ctrl.Result{}, err
	case s.drv.Status.Phase == v1.DRActive:
		s.out = outcome{stalled: true, reason: "VolumeDeleted", message: fmt.Sprintf("the activated volume %s was deleted", name)}
		return ctrl.Result{}, reconcile.TerminalError(errors.New(s.out.message))
	}
	store, res, err := r.openStore(ctx, s)
	if store == nil {
		return res, err
	}
	info, err := store.Latest(ctx, s.drv.Spec.SourceVolume)
	switch {
	case errors.Is(err, backupstore.ErrBackupNotFound):
		return r.wait(s, "WaitingForBackup", "BackupTarget %s has no complete backup of volume %s yet", s.drv.Spec.BackupTargetRef, s.drv.Spec.SourceVolume)
	case err != nil:
		return r.wait(s, "WaitingForBackupTarget", "reading the catalogue of %s: %v", s.drv.Spec.SourceVolume, err)
	}
	vol = r.standbyVolume(s.drv, name, info)
	if err := r.Create(ctx, vol); err != nil {
		return ctrl.Result{}, err
	}
	log.FromContext(ctx).Info("Standby volume created", "volume", name, "backup", info.ID, "bytes", info.Size)
	r.Recorder.Eventf(s.drv, vol, corev1.EventTypeNormal, "StandbyCreated", "Create", "standby volume %s restores backup %s of %s", name, info.ID, s.drv.Spec.SourceVolume)
	s.vol, s.drv.Status.VolumeName = vol, name
	return ctrl.Result{}, nil
}

// standbyVolume is the Volume a DR volume keeps restored.
func (r *Reconciler) standbyVolume(drv *v1.DisasterRecoveryVolume, name string, info backupstore.BackupInfo) *v1.Volume {
	vol := &v1.Volume{ObjectMeta: metav1.ObjectMeta{
		Name:        name,
		Labels:      map[string]string{LabelNamespace: drv.Namespace, LabelName: drv.Name},
		Annotations: map[string]string{AnnotationBackupCreated: info.Created.UTC().Format(time.RFC3339Nano)},
	}}
	vol.Spec.Size = *resource.NewQuantity(info.Size, resource.BinarySI)
	vol.Spec.PolicyRef = drv.Spec.PolicyRef
	vol.Spec.Standby = true
	vol.Spec.FromBackup = &v1.BackupSource{BackupTargetRef: drv.Spec.BackupTargetRef, Volume: drv.Spec.SourceVolume, Backup: info.ID}
	return vol
}

// follow records the backup the standby holds and, once it holds the one
// it was pointed at, points it at a newer backup if the source has one.
func (r *Reconciler) follow(ctx context.Context, s *scope) (ctrl.Result, error) {
	if s.drv.Spec.Activate || !s.vol.Spec.Standby {
		return ctrl.Result{}, nil
	}
	store, res, err := r.openStore(ctx, s)
	if store == nil {
		return res, err
	}
	held, created, ok := holds(s.vol)
	if !ok {
		return r.stillApplying(ctx, s, store)
	}
	r.unpin(ctx, s, store, held)
	r.recordHeld(s, held, created)
	info, err := store.Latest(ctx, s.drv.Spec.SourceVolume)
	switch {
	case errors.Is(err, backupstore.ErrBackupNotFound):
		info = backupstore.BackupInfo{} // every backup deleted: keep what we hold
	case err != nil:
		return r.wait(s, "WaitingForBackupTarget", "reading the catalogue of %s: %v", s.drv.Spec.SourceVolume, err)
	}
	if info.ID == "" || info.ID == held || !info.Created.After(created) {
		s.out = outcome{ready: true, reason: "Following", message: fmt.Sprintf("standby volume %s holds backup %s of %s, the newest", s.vol.Name, held, s.drv.Spec.SourceVolume)}
		return ctrl.Result{}, nil
	}
	if err := r.pin(ctx, s, store, info.ID); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.pointAt(ctx, s.vol, info.ID, info.Created); err != nil {
		return ctrl.Result{}, err
	}
	log.FromContext(ctx).Info("Applying a newer backup to the standby", "volume", s.vol.Name, "from", held, "to", info.ID)
	return r.applying(s)
}

// stillApplying renews the pin on the backup being applied; when its
// restore failed (the source deleted it, or it cannot be read) it points
// the standby at the newest backup instead, if that is another one.
func (r *Reconciler) stillApplying(ctx context.Context, s *scope, store *backupstore.Store) (ctrl.Result, error) {
	target := s.vol.Spec.FromBackup.Backup
	if restoreFailed(s.vol, target) {
		info, err := store.Latest(ctx, s.drv.Spec.SourceVolume)
		if err == nil && info.ID != target {
			log.FromContext(ctx).Info("Backup being applied failed; applying the newest instead", "volume", s.vol.Name, "failed", target, "backup", info.ID)
			if err := r.pin(ctx, s, store, info.ID); err != nil {
				return ctrl.Result{}, err
			}
			if err := r.pointAt(ctx, s.vol, info.ID, info.Created); err != nil {
				return ctrl.Result{}, err
			}
		}
		return r.applying(s)
	}
	if err := r.pin(ctx, s, store, target); err != nil {
		return ctrl.Result{}, err
	}
	return r.applying(s)
}

// pinTTL is how long a pin lasts: several polls, so a live DR site always
// renews it in time and a lost one releases the source's backup soon.
func (r *Reconciler) pinTTL(drv *v1.DisasterRecoveryVolume) time.Duration {
	return max(10*time.Minute, 3*r.pollInterval(drv))
}

// pin keeps the source from deleting a backup the standby is about to
// apply (backupstore pins; the holder is the DR volume's UID).
func (r *Reconciler) pin(ctx context.Context, s *scope, store *backupstore.Store, backup string) error {
	if err := store.Pin(ctx, s.drv.Spec.SourceVolume, backup, string(s.drv.UID), r.pinTTL(s.drv)); err != nil {
		return fmt.Errorf("pin backup %s of %s: %w", backup, s.drv.Spec.SourceVolume, err)
	}
	return nil
}

// unpin releases a backup the standby holds: its agents keep the blocks it
// holds, so the source may delete it. Best effort: the pin expires anyway.
func (r *Reconciler) unpin(ctx context.Context, s *scope, store *backupstore.Store, backup string) {
	if err := store.Unpin(ctx, s.drv.Spec.SourceVolume, backup, string(s.drv.UID)); err != nil {
		log.FromContext(ctx).V(1).Info("Unpin failed; the pin expires", "backup", backup, "error", err.Error())
	}
}

// applying reports a standby that does not hold its backup yet.
func (r *Reconciler) applying(s *scope) (ctrl.Result, error) {
	if c := meta.FindStatusCondition(s.vol.Status.Conditions, v1.ConditionStalled); c != nil && c.Status == metav1.ConditionTrue {
		s.drv.Status.Phase = v1.DRFailed
		s.out = outcome{reason: c.Reason, message: fmt.Sprintf("standby volume %s: %s", s.vol.Name, c.Message)}
		return ctrl.Result{RequeueAfter: r.pollInterval(s.drv)}, nil
	}
	if s.drv.Status.LastRestoredBackup == "" {
		s.drv.Status.Phase = v1.DRRestoring
		s.out = outcome{reason: "Restoring", message: fmt.Sprintf("restoring backup %s of %s into standby volume %s", s.vol.Spec.FromBackup.Backup, s.drv.Spec.SourceVolume, s.vol.Name)}
	} else {
		// Updates are routine: the standby stays Ready meanwhile.
		s.drv.Status.Phase = v1.DRStandby
		s.out = outcome{ready: true, reason: "Applying", message: fmt.Sprintf("standby volume %s holds backup %s and is applying %s", s.vol.Name, s.drv.Status.LastRestoredBackup, s.vol.Spec.FromBackup.Backup)}
	}
	return ctrl.Result{RequeueAfter: applyPoll}, nil
}

// holds returns the backup every replica of the volume holds, with its
// source creation time, once that is the backup spec.fromBackup names.
func holds(vol *v1.Volume) (string, time.Time, bool) {
	src := vol.Spec.FromBackup
	if src == nil || vol.Status.RestoredBackup != src.Backup || !meta.IsStatusConditionTrue(vol.Status.Conditions, v1.ConditionRestored) {
		return "", time.Time{}, false
	}
	created, _ := time.Parse(time.RFC3339Nano, vol.Annotations[AnnotationBackupCreated])
	return src.Backup, created, true
}

// recordHeld writes the held backup, its time and the lag into status and
// the lag metric (while following and at activation).
func (r *Reconciler) recordHeld(s *scope, backup string, created time.Time) {
	st := &s.drv.Status
	if st.Phase != v1.DRActive && st.Phase != v1.DRActivating {
		st.Phase = v1.DRStandby
	}
	st.LastRestoredBackup = backup
	if created.IsZero() {
		return
	}
	st.LastRestoredBackupTime = &metav1.Time{Time: created}
	st.Lag = &metav1.Duration{Duration: r.Now().Sub(created).Round(time.Second)}
	lag.set(s.drv.Namespace, s.drv.Name, created)
}

// pointAt makes the standby Volume restore backup next.
func (r *Reconciler) pointAt(ctx context.Context, vol *v1.Volume, next string, created time.Time) error {
	patch := client.MergeFrom(vol.DeepCopy())
	if vol.Annotations == nil {
		vol.Annotations = map[string]string{}
	}
	vol.Annotations[AnnotationBackupCreated] = created.UTC().Format(time.RFC3339Nano)
	vol.Spec.FromBackup.Backup = next
	return r.Patch(ctx, vol, patch)
}

// openStore opens the DR volume's BackupTarget, or sets a waiting outcome
// and returns nil when it cannot be opened yet.
func (r *Reconciler) openStore(ctx context.Context, s *scope) (*backupstore.Store, ctrl.Result, error) {
	ref := s.drv.Spec.BackupTargetRef
	store, err := r.Stores.Open(ctx, r.Client, string(ref), targets.DefaultTimeout)
	var se *targets.SpecError
	switch {
	case errors.Is(err, targets.ErrNotFound):
		res, err := r.wait(s, "WaitingForBackupTarget", "BackupTarget %s does not exist", ref)
		return nil, res, err
	case errors.As(err, &se):
		res, err := r.wait(s, "WaitingForBackupTarget", "BackupTarget %s cannot be opened: %s", ref, se.Message)
		return nil, res, err
	case err != nil:
		res, err := r.wait(s, "WaitingForBackupTarget", "BackupTarget %s: %v", ref, err)
		return nil, res, err
	}
	return store, ctrl.Result{}, nil
}

// wait sets a waiting outcome and asks to look again after the poll
// interval.
func (r *Reconciler) wait(s *scope, reason, format string, args ...any) (ctrl.Result, error) {
	if s.drv.Status.Phase == "" {
		s.drv.Status.Phase = v1.DRPending
	}
	s.out = outcome{reason: reason, message: fmt.Sprintf(format, args...)}
	return ctrl.Result{RequeueAfter: r.pollInterval(s.drv)}, nil
}
