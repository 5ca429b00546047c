package controllers

import (
	"context"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=storage.cairn.dev,resources=volumepolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.k8s.io,resources=storageclasses,verbs=get;list;watch;create;update;patch;delete

// Driver is Cairn's CSI driver name, the provisioner of its StorageClasses.
const Driver = "csi.cairn.dev"

// StorageClass parameters Cairn's CSI driver reads.
const (
	ParamPolicy = "policy"
	ParamFSType = "csi.storage.k8s.io/fstype"
	annDefault  = "storageclass.kubernetes.io/is-default-class"
)

// VolumePolicyReconciler maintains a policy's StorageClass and counts the
// volumes it governs by health. Volumes follow policy changes through the
// Volume controller, which watches policies.
type VolumePolicyReconciler struct {
	client.Client
}

// Reconcile ensures the StorageClass and the status counts.
func (r *VolumePolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	p := &v1.VolumePolicy{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	orig := p.DeepCopy()
	o := outcome{ready: true, reason: "Reconciled", message: "policy applied"}
	defer func() {
		if err != nil && !o.stalled {
			o = outcome{reason: "ReconcileError", message: err.Error()}
		}
		setConditions(&p.Status.Conditions, &p.Status.ObservedGeneration, p.Generation, o)
		if perr := r.Status().Patch(ctx, p, client.MergeFrom(orig)); perr != nil && !apierrors.IsNotFound(perr) && err == nil {
			err = perr
		}
	}()
	if err := r.countVolumes(ctx, p); err != nil {
		return ctrl.Result{}, err
	}
	if msg, err := r.ensureStorageClass(ctx, p); err != nil || msg != "" {
		if msg != "" {
			o = outcome{stalled: true, reason: "StorageClassConflict", message: msg}
		}
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, nil
}

// countVolumes counts the volumes whose effective policy is p, and flags
// an equal-priority tie with another policy.
func (r *VolumePolicyReconciler) countVolumes(ctx context.Context, p *v1.VolumePolicy) error {
	var vols v1.VolumeList
	if err := r.List(ctx, &vols); err != nil {
		return err
	}
	var pols v1.VolumePolicyList
	if err := r.List(ctx, &pols); err != nil {
		return err
	}
	st := &p.Status
	st.VolumeCount, st.HealthyCount, st.DegradedCount = 0, 0, 0
	var tie []string
	for i := range vols.Items {
		v := &vols.Items[i]
		if e, err := policies.EffectivePolicy(v, pols.Items); err == nil && len(e.Tied) > 1 && contains(e.Tied, p.Name) {
			tie = e.Tied
		}
		if v.Status.EffectivePolicy != p.Name {
			continue
		}
		st.VolumeCount++
		switch v.Status.Robustness {
		case v1.RobustnessHealthy:
			st.HealthyCount++
		case v1.RobustnessDegraded:
			st.DegradedCount++
		}
	}
	setFlag(&st.Conditions, "PolicyConflict", tie != nil, "EqualPriority",
		fmt.Sprintf("policies %v select the same volumes with equal priority; the first by name wins", tie), p.Generation)
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ensureStorageClass creates or updates the policy's StorageClass. A class
// of that name not owned by the policy is a conflict a user must resolve
// (returned as a message, not an error). Immutable fields that changed
// make the class be recreated.
func (r *VolumePolicyReconciler) ensureStorageClass(ctx context.Context, p *v1.VolumePolicy) (string, error) {
	tmpl := p.Spec.StorageClass
	if tmpl == nil {
		return "", nil
	}
	want := desiredStorageClass(p)
	if err := controllerutil.SetControllerReference(p, want, r.Scheme()); err != nil {
		return "", err
	}
	cur := &storagev1.StorageClass{}
	err := r.Get(ctx, client.ObjectKey{Name: tmpl.Name}, cur)
	switch {
	case apierrors.IsNotFound(err):
		log.FromContext(ctx).Info("Creating StorageClass", "storageClass", want.Name)
		return "", r.Create(ctx, want)
	case err != nil:
		return "", err
	case !metav1.IsControlledBy(cur, p):
		return fmt.Sprintf("StorageClass %s exists and is not managed by this policy; rename one of them", tmpl.Name), nil
	case cur.Provisioner != want.Provisioner || !maps.Equal(cur.Parameters, want.Parameters) || *cur.ReclaimPolicy != *want.ReclaimPolicy ||
		!equalBinding(cur.VolumeBindingMode, want.VolumeBindingMode):
		return "", r.Delete(ctx, cur) // immutable fields changed: recreated on the delete event
	}
	patch := client.MergeFrom(cur.DeepCopy())
	cur.AllowVolumeExpansion = want.AllowVolumeExpansion
	cur.Annotations = want.Annotations
	return "", r.Patch(ctx, cur, patch)
}

// equalBinding compares two binding modes; unset is Immediate (the API
// server's default).
func equalBinding(a, b *storagev1.VolumeBindingMode) bool {
	mode := func(m *storagev1.VolumeBindingMode) storagev1.VolumeBindingMode {
		if m == nil {
			return storagev1.VolumeBindingImmediate
		}
		return *m
	}
	return mode(a) == mode(b)
}

func desiredStorageClass(p *v1.VolumePolicy) *storagev1.StorageClass {
	t := p.Spec.StorageClass
	reclaim := t.ReclaimPolicy
	if reclaim == "" {
		reclaim = corev1.PersistentVolumeReclaimDelete
	}
	expand := t.AllowVolumeExpansion == nil || *t.AllowVolumeExpansion
	fs := t.FSType
	if fs == "" {
		fs = "ext4"
	}
	// Immediate: a Cairn volume is usable on every node (CreateVolume
	// reports no accessible topology), so waiting for a consumer would only
	// keep a PVC Pending until a scheduler places a pod.
	binding := storagev1.VolumeBindingImmediate
	sc := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: t.Name, Labels: map[string]string{"storage.cairn.dev/policy": p.Name}},
		Provisioner:          Driver,
		Parameters:           map[string]string{ParamPolicy: p.Name, ParamFSType: fs},
		ReclaimPolicy:        &reclaim,
		AllowVolumeExpansion: &expand,
		VolumeBindingMode:    &binding,
	}
	if t.IsDefault {
		sc.Annotations = map[string]string{annDefault: "true"}
	}
	return sc
}

// SetupWithManager watches policies, their StorageClasses and the volumes
// they count.
func (r *VolumePolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.VolumePolicy{}).
		Owns(&storagev1.StorageClass{}).
		Watches(&v1.Volume{}, handler.EnqueueRequestsFromMapFunc(r.policiesOfVolume)).
		Complete(r)
}

// policiesOfVolume enqueues the volume's effective policy and every policy
// whose selector matches it: their counts or ties may have changed.
func (r *VolumePolicyReconciler) policiesOfVolume(ctx context.Context, o client.Object) []reconcile.Request {
	vol := o.(*v1.Volume)
	var pols v1.VolumePolicyList
	if err := r.List(ctx, &pols); err != nil {
		log.FromContext(ctx).Error(err, "List policies for a volume change")
		return nil
	}
	var out []reconcile.Request
	for _, p := range pols.Items {
		if p.Name == vol.Status.EffectivePolicy || selects(&p, vol) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Name: p.Name}})
		}
	}
	return out
}

// selects reports whether p's selector matches vol's labels.
func selects(p *v1.VolumePolicy, vol *v1.Volume) bool {
	if p.Spec.Selector == nil {
		return false
	}
	sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
	return err == nil && !sel.Empty() && sel.Matches(labels.Set(vol.Labels))
}
