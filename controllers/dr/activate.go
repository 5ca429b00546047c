package dr

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/engine/backupstore"
)

// activate brings the standby to the newest restorable backup and takes it
// out of standby. The chosen backup is kept in the Volume's annotation, so
// a restart continues with the same one.
func (r *Reconciler) activate(ctx context.Context, s *scope) (ctrl.Result, error) {
	if !s.drv.Spec.Activate {
		return ctrl.Result{}, nil
	}
	// Derived from the Volume's annotation on every reconcile: a status
	// written from a stale cached copy must not lose it.
	r.reportSkipped(s)
	if !s.vol.Spec.Standby {
		return ctrl.Result{}, nil
	}
	s.drv.Status.Phase = v1.DRActivating
	chosen := s.vol.Annotations[AnnotationActivateBackup]
	if chosen == "" || restoreFailed(s.vol, chosen) {
		res, err := r.chooseBackup(ctx, s, chosen)
		if err != nil || !res.IsZero() || s.out.stalled {
			return res, err
		}
		chosen = s.vol.Annotations[AnnotationActivateBackup]
		r.reportSkipped(s)
	}
	held, created, ok := holds(s.vol)
	if !ok || held != chosen {
		if store, _, _ := r.openStore(ctx, s); store != nil {
			if err := r.pin(ctx, s, store, chosen); err != nil {
				return ctrl.Result{}, err
			}
		}
		s.out = outcome{reason: "Activating", message: fmt.Sprintf("applying backup %s of %s to volume %s before it goes live", chosen, s.drv.Spec.SourceVolume, s.vol.Name)}
		return ctrl.Result{RequeueAfter: applyPoll}, nil
	}
	r.recordHeld(s, held, created)
	patch := client.MergeFrom(s.vol.DeepCopy())
	s.vol.Spec.Standby = false
	s.vol.Spec.PolicyRef = s.drv.Spec.PolicyRef
	if err := r.Patch(ctx, s.vol, patch); err != nil {
		return ctrl.Result{}, err
	}
	lag.set(s.drv.Namespace, s.drv.Name, time.Time{})
	rpo, how := r.rpo(s.vol, created)
	s.drv.Status.RPO = &metav1.Duration{Duration: rpo}
	log.FromContext(ctx).Info("Standby activated", "volume", s.vol.Name, "backup", chosen, "rpo", rpo.String())
	r.Recorder.Eventf(s.drv, s.vol, corev1.EventTypeNormal, "Activated", "Activate", "volume %s is live from backup %s of %s; %s", s.vol.Name, chosen, s.drv.Spec.SourceVolume, how)
	return ctrl.Result{}, nil
}

// restoreFailed reports whether the volume's replicas failed to restore
// backup (the standby's restore stalled on it).
func restoreFailed(vol *v1.Volume, backup string) bool {
	c := meta.FindStatusCondition(vol.Status.Conditions, v1.ConditionRestored)
	return c != nil && c.Reason == "RestoreFailed" && vol.Status.RestoredBackup == backup
}

// chooseBackup picks the newest backup whose manifest reads back, older
// than failed when a restore of failed did not succeed, records it and the
// skipped ones in the Volume's annotations, and points the Volume at it.
func (r *Reconciler) chooseBackup(ctx context.Context, s *scope, failed string) (ctrl.Result, error) {
	store, res, err := r.openStore(ctx, s)
	if store == nil {
		return res, err
	}
	src := s.drv.Spec.SourceVolume
	list, err := store.List(ctx, src)
	if err != nil {
		return r.wait(s, "WaitingForBackupTarget", "reading the catalogue of %s: %v", src, err)
	}
	skipped := splitList(s.vol.Annotations[AnnotationSkipped])
	if failed != "" {
		skipped = append(skipped, failed)
	}
	for i := len(list) - 1; i >= 0; i-- {
		b := list[i]
		if slices.Contains(skipped, b.ID) {
			continue
		}
		if failed != "" && !b.Created.Before(createdOf(list, failed)) {
			continue
		}
		if _, err := store.Resolve(ctx, src, b.ID); err != nil {
			log.FromContext(ctx).Error(err, "Backup unreadable, trying an older one", "backup", b.ID)
			skipped = append(skipped, b.ID)
			continue
		}
		return ctrl.Result{}, r.pointAtActivation(ctx, s.vol, b, skipped)
	}
	s.out = outcome{stalled: true, reason: "NoRestorableBackup", message: fmt.Sprintf("no backup of %s in BackupTarget %s can be restored (unreadable: %s)", src, s.drv.Spec.BackupTargetRef, strings.Join(skipped, ", "))}
	return ctrl.Result{}, reconcile.TerminalError(errors.New(s.out.message))
}

func createdOf(list []backupstore.BackupInfo, id string) time.Time {
	for _, b := range list {
		if b.ID == id {
			return b.Created
		}
	}
	return time.Now().Add(24 * time.Hour) // gone from the catalogue: any listed backup is older
}

// pointAtActivation records the chosen backup and points the Volume at it.
func (r *Reconciler) pointAtActivation(ctx context.Context, vol *v1.Volume, b backupstore.BackupInfo, skipped []string) error {
	patch := client.MergeFrom(vol.DeepCopy())
	if vol.Annotations == nil {
		vol.Annotations = map[string]string{}
	}
	vol.Annotations[AnnotationActivateBackup] = b.ID
	if len(skipped) > 0 {
		vol.Annotations[AnnotationSkipped] = strings.Join(skipped, ",")
	}
	vol.Annotations[AnnotationBackupCreated] = b.Created.UTC().Format(time.RFC3339Nano)
	vol.Annotations[AnnotationFenced] = strconv.FormatBool(b.Labels[v1.LabelFenced] == "true")
	vol.Spec.FromBackup.Backup = b.ID
	return r.Patch(ctx, vol, patch)
}

// reportSkipped sets condition BackupSkipped when activation passed over
// unreadable newer backups.
func (r *Reconciler) reportSkipped(s *scope) {
	skipped := splitList(s.vol.Annotations[AnnotationSkipped])
	if len(skipped) == 0 {
		meta.RemoveStatusCondition(&s.drv.Status.Conditions, ConditionBackupSkipped)
		return
	}
	meta.SetStatusCondition(&s.drv.Status.Conditions, metav1.Condition{
		Type: ConditionBackupSkipped, Status: metav1.ConditionTrue, Reason: "Unreadable", ObservedGeneration: s.drv.Generation,
		Message: fmt.Sprintf("activated from backup %s: newer backups could not be read: %s", s.vol.Annotations[AnnotationActivateBackup], strings.Join(skipped, ", ")),
	})
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// rpo is what activation from the volume's backup may have lost: nothing
// when the source was fenced when it was taken, else the writes since its
// creation.
func (r *Reconciler) rpo(vol *v1.Volume, created time.Time) (time.Duration, string) {
	if vol.Annotations[AnnotationFenced] == "true" {
		return 0, "the source was fenced (detached) when that backup was taken: RPO 0"
	}
	if created.IsZero() {
		return 0, "the backup's creation time is unknown"
	}
	d := r.Now().Sub(created).Round(time.Second)
	return d, fmt.Sprintf("writes to the source in the %s after that backup are not included", d)
}
