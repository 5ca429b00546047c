package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// Indexes of Volumes by the snapshot they are filled from.
const (
	// fromSnapshotIndex indexes Volumes by spec.fromSnapshot.
	fromSnapshotIndex = "spec.fromSnapshot"
	// copySourceIndex indexes Volumes still being filled by the volume
	// whose replicas they copy from (status.restoredSnapshot.volume).
	copySourceIndex = "status.restoredSnapshot.volume"
)

// copying reports whether the volume is filled from a snapshot (its own
// fromSnapshot, or one taken of its fromVolume) and not yet filled.
func (s *volumeScope) copying() bool {
	return (s.vol.Spec.FromSnapshot != "" || s.vol.Spec.FromVolume != "") &&
		!meta.IsStatusConditionTrue(s.vol.Status.Conditions, v1.ConditionRestored)
}

// resolveCopy fixes the snapshot a fromSnapshot or fromVolume volume is
// filled from (once, in status.restoredSnapshot; for a clone after taking
// that snapshot) and reports the Restored condition from what the
// replicas' agents report. Replicas are placed only once the snapshot is
// known; the engine starts only once Restored is True. A clone's snapshot
// is removed once the clone is filled.
func (r *VolumeReconciler) resolveCopy(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	if s.vol.Spec.FromSnapshot == "" && s.vol.Spec.FromVolume == "" {
		return ctrl.Result{}, nil
	}
	if !s.copying() {
		return ctrl.Result{}, r.removeCloneSnapshot(ctx, s)
	}
	if s.vol.Status.RestoredSnapshot == nil {
		src, err := r.pickSnapshot(ctx, s)
		if src == nil && err == nil {
			// Watches requeue it on change; this covers a source volume
			// created later.
			return ctrl.Result{RequeueAfter: restoreWait}, nil
		}
		if src == nil {
			return ctrl.Result{}, err
		}
		s.vol.Status.RestoredSnapshot = src
		log.FromContext(ctx).Info("Filling from snapshot", "sourceVolume", src.Volume, "snapshot", src.Snapshot)
	}
	src := s.vol.Status.RestoredSnapshot
	done, failed := s.restoreProgress()
	switch {
	case failed != nil:
		c := meta.FindStatusCondition(failed.Status.Conditions, v1.ConditionStalled)
		s.out = outcome{stalled: true, reason: "RestoreFailed", message: fmt.Sprintf("replica %s on %s: %s", failed.Name, failed.Spec.NodeID, c.Message)}
		s.setRestored(false, "RestoreFailed", s.out.message)
	case done > 0 && done == s.restoringReplicas():
		s.setRestored(true, "Restored", fmt.Sprintf("every replica holds a copy of snapshot %s of %s", src.Snapshot, src.Volume))
	default:
		s.setRestored(false, "Restoring", fmt.Sprintf("%d of %d replicas filled from snapshot %s of %s", done, s.restoringReplicas(), src.Snapshot, src.Volume))
	}
	return ctrl.Result{}, nil
}

// pickSnapshot resolves the source to a ready Snapshot of another volume
// no larger than this one; for fromVolume it first creates the clone
// snapshot. It returns nil while waiting (the Snapshot watch requeues) or
// stalled.
func (r *VolumeReconciler) pickSnapshot(ctx context.Context, s *volumeScope) (*v1.SnapshotSource, error) {
	name := string(s.vol.Spec.FromSnapshot)
	if s.vol.Spec.FromVolume != "" {
		ok, err := r.ensureCloneSnapshot(ctx, s)
		if !ok || err != nil {
			return nil, err
		}
		name = cloneSnapshotName(s.vol.Name)
	}
	snap := &v1.Snapshot{}
	err := r.Get(ctx, client.ObjectKey{Name: name}, snap)
	switch {
	case apierrors.IsNotFound(err):
		return nil, r.waitCopy(s, "WaitingForSnapshot", "Snapshot %s does not exist", name)
	case err != nil:
		return nil, err
	case !snap.DeletionTimestamp.IsZero():
		return nil, r.stallCopy(s, "SnapshotDeleted", "Snapshot %s is being deleted", name)
	case snap.Spec.VolumeName == s.vol.Name:
		return nil, r.stallCopy(s, "InvalidSource", "Snapshot %s is of this volume", name)
	case meta.IsStatusConditionTrue(snap.Status.Conditions, v1.ConditionStalled):
		return nil, r.stallCopy(s, "SnapshotFailed", "Snapshot %s failed: %s", name, meta.FindStatusCondition(snap.Status.Conditions, v1.ConditionStalled).Message)
	case !snap.Status.ReadyToUse:
		return nil, r.waitCopy(s, "WaitingForSnapshot", "Snapshot %s of %s is not taken yet", name, snap.Spec.VolumeName)
	case snap.Status.RestoreSize != nil && snap.Status.RestoreSize.Cmp(s.vol.Spec.Size) > 0:
		return nil, r.stallCopy(s, "SnapshotTooLarge", "Snapshot %s holds %s; spec.size %s is smaller", name, snap.Status.RestoreSize.String(), s.vol.Spec.Size.String())
	}
	return &v1.SnapshotSource{Volume: snap.Spec.VolumeName, Snapshot: snap.Name}, nil
}

// ensureCloneSnapshot creates the Snapshot a clone is filled from: of the
// fromVolume, owned by the clone and labelled with it (no schedule's label,
// so no retention prunes it). It reports whether the snapshot exists.
func (r *VolumeReconciler) ensureCloneSnapshot(ctx context.Context, s *volumeScope) (bool, error) {
	name := cloneSnapshotName(s.vol.Name)
	err := r.Get(ctx, client.ObjectKey{Name: name}, &v1.Snapshot{})
	if !apierrors.IsNotFound(err) {
		return err == nil, err
	}
	src := string(s.vol.Spec.FromVolume)
	srcVol := &v1.Volume{}
	switch err := r.Get(ctx, client.ObjectKey{Name: src}, srcVol); {
	case apierrors.IsNotFound(err):
		return false, r.waitCopy(s, "WaitingForSourceVolume", "Volume %s does not exist", src)
	case err != nil:
		return false, err
	case src == s.vol.Name:
		return false, r.stallCopy(s, "InvalidSource", "a volume cannot be cloned from itself")
	case srcVol.Spec.Size.Cmp(s.vol.Spec.Size) > 0:
		return false, r.stallCopy(s, "SourceTooLarge", "Volume %s is %s; spec.size %s is smaller", src, srcVol.Spec.Size.String(), s.vol.Spec.Size.String())
	}
	snap := &v1.Snapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1.LabelVolume: src, v1.LabelClone: s.vol.Name}},
		Spec:       v1.SnapshotSpec{VolumeName: src},
	}
	if err := controllerutil.SetControllerReference(s.vol, snap, r.Scheme()); err != nil {
		return false, err
	}
	if err := r.Create(ctx, snap); client.IgnoreAlreadyExists(err) != nil {
		return false, err
	}
	log.FromContext(ctx).Info("Snapshot taken for a clone", "sourceVolume", src, "snapshot", name)
	return false, r.waitCopy(s, "WaitingForSnapshot", "taking snapshot %s of %s for the clone", name, src)
}

// removeCloneSnapshot deletes the snapshot a filled clone was copied from.
func (r *VolumeReconciler) removeCloneSnapshot(ctx context.Context, s *volumeScope) error {
	if s.vol.Spec.FromVolume == "" {
		return nil
	}
	snap := &v1.Snapshot{}
	err := r.Get(ctx, client.ObjectKey{Name: cloneSnapshotName(s.vol.Name)}, snap)
	if apierrors.IsNotFound(err) || err == nil && (!snap.DeletionTimestamp.IsZero() || snap.Labels[v1.LabelClone] != s.vol.Name) {
		return nil
	}
	if err != nil {
		return err
	}
	log.FromContext(ctx).Info("Removing the clone's snapshot", "snapshot", snap.Name, "sourceVolume", snap.Spec.VolumeName)
	return client.IgnoreNotFound(r.Delete(ctx, snap, client.Preconditions{UID: &snap.UID}))
}

// waitCopy records what the fill waits for; the Snapshot and Volume
// watches requeue the volume when it changes.
func (r *VolumeReconciler) waitCopy(s *volumeScope, reason, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	s.setRestored(false, reason, msg)
	s.out = outcome{reason: reason, message: msg}
	return nil
}

func (r *VolumeReconciler) stallCopy(s *volumeScope, reason, format string, args ...any) error {
	s.out = outcome{stalled: true, reason: reason, message: fmt.Sprintf(format, args...)}
	s.setRestored(false, reason, s.out.message)
	return reconcile.TerminalError(errors.New(s.out.message))
}

// cloneSnapshotName is clone-VOLUME (the volume name cut, with a hash of
// it, to fit 253 characters).
func cloneSnapshotName(vol string) string {
	const prefix = "clone-"
	if len(prefix)+len(vol) <= 253 {
		return prefix + vol
	}
	sum := sha256.Sum256([]byte(vol))
	return prefix + vol[:200] + "-" + hex.EncodeToString(sum[:8])
}

// copiedSnapshot is what a replica's status.copiedSnapshot says once it
// holds a copy of the chosen snapshot (VOLUME/SNAPSHOT), "" before one is
// chosen.
func (s *volumeScope) copiedSnapshot() string {
	if src := s.vol.Status.RestoredSnapshot; src != nil {
		return src.Volume + "/" + src.Snapshot
	}
	return ""
}

// copyPending reports whether a volume still copies from the source.
func copyPending(v *v1.Volume) bool {
	return v.DeletionTimestamp.IsZero() && v.Status.RestoredSnapshot != nil &&
		!meta.IsStatusConditionTrue(v.Status.Conditions, v1.ConditionRestored)
}

// loadCopies marks work for the engine while another volume copies a
// snapshot from this one's replicas: a detached volume then runs its
// maintenance engine, which runs its replicas.
func (r *VolumeReconciler) loadCopies(ctx context.Context, s *volumeScope) (ctrl.Result, error) {
	var list v1.VolumeList
	if err := r.List(ctx, &list, client.MatchingFields{copySourceIndex: s.vol.Name}); err != nil {
		return ctrl.Result{}, err
	}
	for i := range list.Items {
		s.work = s.work || copyPending(&list.Items[i])
	}
	return ctrl.Result{}, nil
}

// indexCopies adds the Volume indexes the copy path looks up.
func indexCopies(ctx context.Context, idx interface {
	IndexField(context.Context, client.Object, string, client.IndexerFunc) error
}) error {
	if err := idx.IndexField(ctx, &v1.Volume{}, fromSnapshotIndex, func(o client.Object) []string {
		if n := o.(*v1.Volume).Spec.FromSnapshot; n != "" {
			return []string{string(n)}
		}
		return nil
	}); err != nil {
		return err
	}
	return idx.IndexField(ctx, &v1.Volume{}, copySourceIndex, func(o client.Object) []string {
		if v := o.(*v1.Volume); copyPending(v) {
			return []string{v.Status.RestoredSnapshot.Volume}
		}
		return nil
	})
}

// copySourceOf maps a volume being filled to the volume it copies from
// (which must run its replicas meanwhile, and stop them afterwards).
func copySourceOf(_ context.Context, o client.Object) []reconcile.Request {
	v := o.(*v1.Volume)
	if v.Status.RestoredSnapshot == nil {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: v.Status.RestoredSnapshot.Volume}}}
}

// copiesOfSnapshot maps a Snapshot to the volumes waiting to be filled
// from it: those naming it in spec.fromSnapshot and the clone it was taken
// for.
func (r *VolumeReconciler) copiesOfSnapshot(ctx context.Context, o client.Object) []reconcile.Request {
	var out []reconcile.Request
	if c := o.GetLabels()[v1.LabelClone]; c != "" {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Name: c}})
	}
	var list v1.VolumeList
	if err := r.List(ctx, &list, client.MatchingFields{fromSnapshotIndex: o.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "List volumes filled from a snapshot")
		return out
	}
	for _, v := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Name: v.Name}})
	}
	return out
}
