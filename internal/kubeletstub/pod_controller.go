package kubeletstub

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
)

// ConditionVolumesPublished is the Pod condition the stand-in sets: True
// with message "VOLUME=PATH, ..." (the pod's volume names and where each
// is published on the node), False with reason Waiting or Failed.
const ConditionVolumesPublished corev1.PodConditionType = "cairn.dev/VolumesPublished"

// podReconciler publishes the PVCs of pods on simulated nodes.
type podReconciler struct {
	*Stub
	recorder recorder.EventRecorder
}

func (s *Stub) setup(mgr ctrl.Manager) error {
	r := &podReconciler{Stub: s, recorder: mgr.GetEventRecorder("cairn-kubelet-stub")}
	err := ctrl.NewControllerManagedBy(mgr).Named("kubelet-stub-pods").
		For(&corev1.Pod{}).
		Watches(&storagev1.VolumeAttachment{}, handler.EnqueueRequestsFromMapFunc(r.podsOfAttachment)).
		Watches(&corev1.PersistentVolumeClaim{}, handler.EnqueueRequestsFromMapFunc(r.podsOfClaim)).
		Complete(r)
	if err != nil {
		return err
	}
	// A pod publishing a claim that waits for node expansion finishes it.
	rz := &resizer{Stub: s, recorder: r.recorder}
	return ctrl.NewControllerManagedBy(mgr).Named("kubelet-stub-resize").
		For(&corev1.PersistentVolumeClaim{}).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(claimsOfPod)).
		Complete(rz)
}

// Reconcile publishes a pod's volumes, or tears them down and deletes the
// pod once it is being deleted (the kubelet's part of graceful deletion).
func (r *podReconciler) Reconcile(ctx context.Context, req reconcile.Request) (ctrl.Result, error) {
	pod := &corev1.Pod{}
	if err := r.client.Get(ctx, req.NamespacedName, pod); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, r.teardownGone(ctx, req.NamespacedName, "")
	}
	n := r.nodes[pod.Spec.NodeName]
	if n == nil {
		return ctrl.Result{}, nil
	}
	// A pod recreated under the same name: the old one's volumes go first.
	if err := r.teardownGone(ctx, req.NamespacedName, pod.UID); err != nil {
		return ctrl.Result{}, err
	}
	if !pod.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.terminate(ctx, n, pod)
	}
	return ctrl.Result{}, r.publishPod(ctx, n, pod)
}

// claims lists the pod's PVC volumes, in the pod's order.
func claims(pod *corev1.Pod) []corev1.Volume {
	var out []corev1.Volume
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			out = append(out, v)
		}
	}
	return out
}

// publishPod publishes every PVC of the pod and reports it in the pod's
// condition.
func (r *podReconciler) publishPod(ctx context.Context, n *node, pod *corev1.Pod) error {
	vols := claims(pod)
	if len(vols) == 0 {
		return nil
	}
	var waiting []string
	for _, v := range vols {
		msg, err := r.publishVolume(ctx, n, pod, v)
		if err != nil {
			r.recorder.Eventf(pod, nil, corev1.EventTypeWarning, "FailedMount", "Publish", "volume %s: %v", v.Name, err)
			return errors.Join(err, r.setCondition(ctx, pod, corev1.ConditionFalse, "Failed", fmt.Sprintf("volume %s: %v", v.Name, err)))
		}
		if msg != "" {
			waiting = append(waiting, msg)
		}
	}
	if len(waiting) > 0 {
		return r.setCondition(ctx, pod, corev1.ConditionFalse, "Waiting", strings.Join(waiting, "; "))
	}
	return r.setCondition(ctx, pod, corev1.ConditionTrue, "Published", r.paths(pod.UID))
}

// publishVolume attaches, stages and publishes one PVC volume; it returns
// what it waits for, or "" when published.
func (r *podReconciler) publishVolume(ctx context.Context, n *node, pod *corev1.Pod, v corev1.Volume) (string, error) {
	pvc, pv, msg, err := r.boundPV(ctx, pod.Namespace, v.PersistentVolumeClaim.ClaimName)
	if err != nil || msg != "" {
		return msg, err
	}
	va, err := r.ensureAttachment(ctx, n, pv)
	if err != nil {
		return "", err
	}
	if !va.DeletionTimestamp.IsZero() {
		return fmt.Sprintf("waiting for VolumeAttachment %s to be detached before attaching again", va.Name), nil
	}
	if !va.Status.Attached {
		if e := va.Status.AttachError; e != nil {
			return fmt.Sprintf("VolumeAttachment %s: %s", va.Name, e.Message), nil
		}
		return fmt.Sprintf("waiting for VolumeAttachment %s to be attached", va.Name), nil
	}
	p := &published{pv: pv.Name, handle: pv.Spec.CSI.VolumeHandle, staging: stagingPath(n, r.driver, pv),
		target: targetPath(n, pod, pv), cap: capability(pv), readOnly: v.PersistentVolumeClaim.ReadOnly || pv.Spec.CSI.ReadOnly}
	if err := stageAndPublish(ctx, n, p, pv, va.Status.AttachmentMetadata); err != nil {
		return "", err
	}
	if r.remember(pod, n.Name, v.Name, p) {
		log.FromContext(ctx).Info("Published volume", "pod", client.ObjectKeyFromObject(pod), "pvc", pvc.Name, "path", p.target)
		r.recorder.Eventf(pod, pvc, corev1.EventTypeNormal, "VolumePublished", "Publish", "PVC %s published at %s", pvc.Name, p.target)
	}
	return "", nil
}

// boundPV returns a bound claim and its CSI PV of this driver, or a
// message saying what it waits for.
func (r *podReconciler) boundPV(ctx context.Context, ns, name string) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume, string, error) {
	pvc := &corev1.PersistentVolumeClaim{}
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, pvc); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil, fmt.Sprintf("persistentvolumeclaim %s not found", name), nil
		}
		return nil, nil, "", err
	}
	if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
		return nil, nil, fmt.Sprintf("persistentvolumeclaim %s is not bound", name), nil
	}
	pv := &corev1.PersistentVolume{}
	if err := r.client.Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, pv); err != nil {
		return nil, nil, "", err
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != r.driver {
		return nil, nil, "", fmt.Errorf("persistentvolume %s is not a %s volume", pv.Name, r.driver)
	}
	return pvc, pv, "", nil
}

// attachmentName is the name the attach-detach controller gives the
// VolumeAttachment of a CSI volume on a node.
func attachmentName(handle, driver, node string) string {
	return fmt.Sprintf("csi-%x", sha256.Sum256([]byte(handle+driver+node)))
}

// ensureAttachment creates the VolumeAttachment the attach-detach
// controller would, for the real csi-attacher to act on.
func (r *podReconciler) ensureAttachment(ctx context.Context, n *node, pv *corev1.PersistentVolume) (*storagev1.VolumeAttachment, error) {
	name := attachmentName(pv.Spec.CSI.VolumeHandle, r.driver, n.Name)
	va := &storagev1.VolumeAttachment{}
	err := r.client.Get(ctx, client.ObjectKey{Name: name}, va)
	if !apierrors.IsNotFound(err) {
		return va, err
	}
	pvName := pv.Name
	va = &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: r.driver, NodeName: n.Name,
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}}}
	log.FromContext(ctx).Info("Creating VolumeAttachment", "volumeAttachment", name, "pv", pv.Name, "node", n.Name)
	return va, client.IgnoreAlreadyExists(r.client.Create(ctx, va))
}

// setCondition sets the pod's VolumesPublished condition when it changed.
func (r *podReconciler) setCondition(ctx context.Context, pod *corev1.Pod, st corev1.ConditionStatus, reason, msg string) error {
	i := slices.IndexFunc(pod.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == ConditionVolumesPublished })
	if i >= 0 {
		c := pod.Status.Conditions[i]
		if c.Status == st && c.Reason == reason && c.Message == msg {
			return nil
		}
	}
	patch := client.StrategicMergeFrom(pod.DeepCopy())
	c := corev1.PodCondition{Type: ConditionVolumesPublished, Status: st, Reason: reason, Message: msg, LastTransitionTime: metav1.Now()}
	if i >= 0 {
		if pod.Status.Conditions[i].Status == st {
			c.LastTransitionTime = pod.Status.Conditions[i].LastTransitionTime
		}
		pod.Status.Conditions[i] = c
	} else {
		pod.Status.Conditions = append(pod.Status.Conditions, c)
	}
	return r.client.Status().Patch(ctx, pod, patch)
}

// remember records a publication; true when it is new.
func (s *Stub) remember(pod *corev1.Pod, node, volume string, p *published) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.published[pod.UID]
	if rec == nil {
		rec = &podVolumes{key: client.ObjectKeyFromObject(pod), node: node, volumes: map[string]*published{}}
		s.published[pod.UID] = rec
	}
	_, had := rec.volumes[volume]
	rec.volumes[volume] = p
	return !had
}

// paths is the condition message: "VOLUME=PATH" pairs, sorted.
func (s *Stub) paths(uid types.UID) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if rec := s.published[uid]; rec != nil {
		for name, p := range rec.volumes {
			out = append(out, name+"="+p.target)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// claimsOfPod maps a pod to its claims.
func claimsOfPod(_ context.Context, o client.Object) []reconcile.Request {
	var out []reconcile.Request
	for _, v := range claims(o.(*corev1.Pod)) {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKey{Namespace: o.GetNamespace(), Name: v.PersistentVolumeClaim.ClaimName}})
	}
	return out
}

// podsOfAttachment maps a VolumeAttachment to the pods on its node.
func (r *podReconciler) podsOfAttachment(ctx context.Context, o client.Object) []reconcile.Request {
	va := o.(*storagev1.VolumeAttachment)
	return r.podsWhere(ctx, "", func(p *corev1.Pod) bool { return p.Spec.NodeName == va.Spec.NodeName })
}

// podsOfClaim maps a PVC to the pods on simulated nodes that use it.
func (r *podReconciler) podsOfClaim(ctx context.Context, o client.Object) []reconcile.Request {
	return r.podsWhere(ctx, o.GetNamespace(), func(p *corev1.Pod) bool {
		return slices.ContainsFunc(claims(p), func(v corev1.Volume) bool { return v.PersistentVolumeClaim.ClaimName == o.GetName() })
	})
}

func (r *podReconciler) podsWhere(ctx context.Context, ns string, match func(*corev1.Pod) bool) []reconcile.Request {
	var pods corev1.PodList
	if err := r.client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
		log.FromContext(ctx).Error(err, "List pods")
		return nil
	}
	var out []reconcile.Request
	for i := range pods.Items {
		p := &pods.Items[i]
		if r.nodes[p.Spec.NodeName] != nil && match(p) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(p)})
		}
	}
	return out
}
