package dr

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// DriverName is the CSI driver a PersistentVolume of an activated volume
// names (csi/doc.go: the volume id is the Volume's name).
const DriverName = "csi.cairn.dev"

// bindClaim creates the PV of the activated volume pre-bound to the claim,
// and the claim, then reports Active once the claim is Bound.
func (r *Reconciler) bindClaim(ctx context.Context, s *scope) (ctrl.Result, error) {
	if !s.drv.Spec.Activate || s.vol.Spec.Standby {
		return ctrl.Result{}, nil
	}
	// The backup it went live from; lag and its metric stopped at
	// activation.
	if held, created, ok := holds(s.vol); ok {
		s.drv.Status.LastRestoredBackup = held
		if !created.IsZero() {
			s.drv.Status.LastRestoredBackupTime = &metav1.Time{Time: created}
		}
	}
	class, err := r.storageClass(ctx, s.drv)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.ensurePV(ctx, s, class); err != nil {
		return ctrl.Result{}, err
	}
	pvc, err := r.ensurePVC(ctx, s, class)
	if err != nil {
		return ctrl.Result{}, err
	}
	if pvc.Spec.VolumeName != "" && pvc.Spec.VolumeName != s.vol.Name {
		s.out = outcome{stalled: true, reason: "ClaimTaken", message: fmt.Sprintf("PersistentVolumeClaim %s/%s is bound to %s, not to the activated volume %s", pvc.Namespace, pvc.Name, pvc.Spec.VolumeName, s.vol.Name)}
		return ctrl.Result{}, reconcile.TerminalError(errors.New(s.out.message))
	}
	if pvc.Status.Phase != corev1.ClaimBound {
		s.drv.Status.Phase = v1.DRActivating
		s.out = outcome{reason: "Binding", message: fmt.Sprintf("waiting for PersistentVolumeClaim %s/%s to bind to %s", pvc.Namespace, pvc.Name, s.vol.Name)}
		return ctrl.Result{}, nil // the PVC watch brings the change
	}
	if s.drv.Status.Phase != v1.DRActive {
		log.FromContext(ctx).Info("DisasterRecoveryVolume active", "volume", s.vol.Name, "claim", pvc.Name)
		r.Recorder.Eventf(s.drv, pvc, corev1.EventTypeNormal, "Active", "Activate", "PersistentVolumeClaim %s is bound to volume %s", pvc.Name, s.vol.Name)
	}
	s.drv.Status.Phase = v1.DRActive
	s.out = outcome{ready: true, reason: "Active", message: fmt.Sprintf("volume %s is live from backup %s, bound to PersistentVolumeClaim %s", s.vol.Name, s.drv.Status.LastRestoredBackup, pvc.Name)}
	return ctrl.Result{}, nil
}

// storageClass is the claim's class: spec.claim.storageClassName, else the
// policy's StorageClass, else none ("").
func (r *Reconciler) storageClass(ctx context.Context, drv *v1.DisasterRecoveryVolume) (string, error) {
	if drv.Spec.Claim.StorageClassName != "" || drv.Spec.PolicyRef == "" {
		return drv.Spec.Claim.StorageClassName, nil
	}
	var p v1.VolumePolicy
	if err := r.Get(ctx, client.ObjectKey{Name: string(drv.Spec.PolicyRef)}, &p); err != nil {
		return "", client.IgnoreNotFound(err)
	}
	if p.Spec.StorageClass == nil {
		return "", nil
	}
	return p.Spec.StorageClass.Name, nil
}

// ensurePV creates the activated volume's PersistentVolume, named like the
// Volume and pre-bound to the claim. Retain: deleting the claim keeps data.
func (r *Reconciler) ensurePV(ctx context.Context, s *scope, class string) error {
	pv := &corev1.PersistentVolume{}
	err := r.Get(ctx, client.ObjectKey{Name: s.vol.Name}, pv)
	if !apierrors.IsNotFound(err) {
		return err
	}
	pv = &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: s.vol.Name, Labels: map[string]string{LabelNamespace: s.drv.Namespace, LabelName: s.drv.Name}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: s.vol.Spec.Size},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              class,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: s.drv.Namespace, Name: s.drv.Spec.Claim.Name},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: DriverName, VolumeHandle: s.vol.Name, FSType: "ext4",
			}},
		},
	}
	return client.IgnoreAlreadyExists(r.Create(ctx, pv))
}

// ensurePVC returns the claim, creating it bound to the PV when missing.
func (r *Reconciler) ensurePVC(ctx context.Context, s *scope, class string) (*corev1.PersistentVolumeClaim, error) {
	key := client.ObjectKey{Namespace: s.drv.Namespace, Name: s.drv.Spec.Claim.Name}
	pvc := &corev1.PersistentVolumeClaim{}
	err := r.Get(ctx, key, pvc)
	if !apierrors.IsNotFound(err) {
		return pvc, err
	}
	pvc = &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name, Labels: map[string]string{LabelNamespace: s.drv.Namespace, LabelName: s.drv.Name}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: s.vol.Spec.Size}},
			VolumeName:       s.vol.Name,
			StorageClassName: &class,
		},
	}
	if err := r.Create(ctx, pvc); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	return pvc, nil
}
